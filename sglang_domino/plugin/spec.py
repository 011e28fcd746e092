"""``DOMINO`` as a plugin-registered speculative algorithm (``SpeculativeAlgorithm.register``).

:class:`DominoSpecAlgo` subclasses SGLang's ``CustomSpecAlgo`` (the documented way to answer its ``is_*()``
predicates). Domino *is* a DFlash-family algorithm to the scheduler and model runner: claiming
``is_dflash()`` turns on target hidden-state capture at the draft's layers, DFlash KV accounting and the
TARGET_VERIFY draft forward, and the worker subclasses ``DFlashWorkerV2``. It also supplies the methods that
``CustomSpecAlgo`` lacks in 0.5.23 but the scheduler calls on every algorithm (``need_topk``,
``carries_draft_hidden_states``, ``create_future_map``), and, in ``handle_server_args``, what upstream's
``_handle_dflash`` sets -- without its CUDA/NPU/XPU-only device check.
"""

from __future__ import annotations

import logging
from typing import Any

# The public names (spec_info re-exports CustomSpecAlgo; spec_registry asks plugins to use the classmethod API).
from sglang.srt.speculative.spec_info import CustomSpecAlgo, SpeculativeAlgorithm

logger = logging.getLogger(__name__)

ALGORITHM_NAME = "DOMINO"
DEFAULT_MAX_RUNNING_REQUESTS = 48  # upstream DFLASH's default


class DominoSpecAlgo(CustomSpecAlgo):
    # --- DFlash family: the scheduler / model runner branches that must fire for a DFlash worker.
    def is_dflash(self) -> bool:
        return True

    def is_dflash_family(self) -> bool:
        return True

    def supports_target_verify_for_draft(self) -> bool:
        return True

    def supports_prefill_shared_read_done(self) -> bool:
        return True

    def supports_grammar_overlap(self) -> bool:
        return True  # DFlashWorkerV2.forward_batch_generation drives the grammar barrier itself

    def has_draft_kv(self) -> bool:
        return True

    # --- methods the scheduler calls on every algorithm, missing from CustomSpecAlgo in 0.5.23
    def need_topk(self) -> bool:
        return False

    def carries_draft_hidden_states(self) -> bool:
        return False

    def create_future_map(self, device, req_to_token_pool, needs_cpu_seq_lens: bool = True,
                          needs_confidence_relay: bool = False):
        from sglang.srt.managers.overlap_utils import FutureMap

        return FutureMap(device, self, req_to_token_pool, needs_cpu_seq_lens, needs_confidence_relay)

    # --- server args: upstream _handle_dflash minus its device check
    def handle_server_args(self, server_args: Any) -> None:
        from sglang_domino.plugin.validate import check_drafter_checkpoint, resolve_block_size

        config = check_drafter_checkpoint(server_args.speculative_draft_model_path)  # read once per process
        block_size = resolve_block_size(server_args, config)
        if server_args.speculative_num_steps not in (None, 1):
            logger.warning("DOMINO drafts one block per step; overriding speculative_num_steps=%s to 1",
                           server_args.speculative_num_steps)
        server_args.speculative_num_steps = 1
        if server_args.speculative_eagle_topk not in (None, 1):
            logger.warning("DOMINO drafts a chain; overriding speculative_eagle_topk=%s to 1",
                           server_args.speculative_eagle_topk)
        server_args.speculative_eagle_topk = 1
        server_args.speculative_num_draft_tokens = block_size
        if server_args.max_running_requests is None:
            server_args.max_running_requests = DEFAULT_MAX_RUNNING_REQUESTS


def worker_factory(server_args: Any):
    from sglang_domino.plugin.worker import DominoWorker

    return DominoWorker


def register_algorithm() -> bool:
    """Register DOMINO once per process; True when this call registered it."""
    try:
        SpeculativeAlgorithm.from_string(ALGORITHM_NAME)
        return False  # registered already
    except ValueError:
        pass
    from sglang_domino.plugin.validate import validate_server_args

    SpeculativeAlgorithm.register(
        ALGORITHM_NAME,
        supports_overlap=True,
        validate_server_args=validate_server_args,
        spec_class=DominoSpecAlgo,
    )(worker_factory)
    return True


__all__ = ["ALGORITHM_NAME", "DominoSpecAlgo", "register_algorithm", "worker_factory"]
