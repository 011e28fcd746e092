"""sglang_domino.training: data for the drafter and the training run, one job per module.

Data (``python -m sglang_domino.training.data``, :mod:`.data`): :mod:`.sources` (offline prompt sources, the
reST reader), :mod:`.templates` (this project's prompt text), :mod:`.corpus` (held-out split, ``train.jsonl``),
:mod:`.distill` (self-distillation, ``pending``, ``pack``), :mod:`.slot_decode` (its in-process decoder),
:mod:`.tokenization` (chat tokens and the assistant-only loss mask), :mod:`.jsonl` (file I/O).

Training (``sglang-domino train``, :mod:`.cli`): :mod:`.pipeline` (the run), :mod:`.batching` (examples, batches,
the data order), :mod:`.features` (target features and their cache), :mod:`.masks` and :mod:`.loss` (the block
masks and the objective), :mod:`.trainer` (the optimiser step), :mod:`.drafter_build` (the drafter a run starts
from), :mod:`.checkpoints` (resume checkpoints, the best drafter), :mod:`.errors`.
"""
