"""sglang-domino: Domino speculative decoding as an SGLang plugin.

Model math: :mod:`.modeling` (drafter), :mod:`.rollout` (drafting), :mod:`.verify` (chain verification),
:mod:`.sampling` (filtered distributions); checkpoint I/O: :mod:`.checkpoint`; SGLang glue: :mod:`.plugin`;
kernels: :mod:`sglang_domino.kernels`; offline reference loop: :mod:`.offline`.
"""

from sglang_domino.checkpoint import CheckpointError, load_drafter, save_drafter, validate_checkpoint
from sglang_domino.config import DominoConfig, DominoConfigError
from sglang_domino.modeling import DominoDrafter
from sglang_domino.rollout import DraftBlock, draft_from_hidden, greedy_rollout, sampling_rollout
from sglang_domino.sampling import SamplingParams, filtered_probs
from sglang_domino.verify import VerifyResult, verify_greedy, verify_sampling

__version__ = "0.1.0"

__all__ = [
    "CheckpointError", "DominoConfig", "DominoConfigError", "DominoDrafter", "DraftBlock", "SamplingParams",
    "VerifyResult", "draft_from_hidden", "filtered_probs", "greedy_rollout", "load_drafter", "sampling_rollout",
    "save_drafter", "validate_checkpoint", "verify_greedy", "verify_sampling",
]
