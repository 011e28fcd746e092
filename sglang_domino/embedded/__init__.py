"""sglang_domino.embedded"""
