"""Launching SGLang with the Domino plugin."""
