"""sglang_domino.plugin"""
