"""sglang_domino.training"""
