"""Benchmarks and the measuring tools they share, installed as ``sglang_domino.benchmarks``.

Each script runs as ``python benchmarks/NAME.py`` (or ``python -m sglang_domino.benchmarks.NAME``) and writes JSON
with provenance (:mod:`sglang_domino.provenance`); ``benchmarks/verify_results.py`` recomputes every published
table from the committed JSON. ``sglang-domino bench`` is :mod:`.serving`. Shared with the server tests:
:mod:`.tiny_pair` (a tiny predictable target + drafter), :mod:`.invariants` (row checks of the draft log),
:mod:`.sampling_stats` (exact target distributions and goodness-of-fit). Results and their history:
``benchmarks/results/``.
"""
