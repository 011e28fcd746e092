"""The few HookRegistry hooks the Domino worker needs, each scoped as narrowly as SGLang allows.

Everything else is done by subclassing (``worker.DominoWorker``, ``spec.DominoSpecAlgo``). These hooks exist
because the code they touch runs *inside* ``DFlashWorkerV2.__init__`` (or inside an attention backend) and
cannot be reached from a subclass. Each one is an AROUND hook that changes behaviour only for Domino -- while a
``DominoWorker`` is being constructed (:data:`building_domino_worker`), in a process serving DOMINO
(:func:`domino_is_active`), for ``--speculative-algorithm domino``, for our own draft runner -- or only for
batches that would otherwise crash, and calls the original otherwise. Every target is listed in :mod:`.contract`.

1. ``domino_utils.validate_domino_runtime``: upstream refuses any device but CUDA and any dtype but BF16 (its
   first and last checks). For our worker those two are skipped -- the original still runs every other check in
   between (vocab sizes, lm_head shards, head shapes) -- because our rollout is plain PyTorch that runs on any
   device and in any floating dtype.
2. ``dflash_utils.parse_dflash_draft_config``: upstream accepts only ``pure_draft_prefix_len == 1`` (its rollout
   hard-codes it). Our rollout implements any value, so in a Domino process (the target runner parses the draft
   config too, to set up hidden-state capture) a Domino config with another value is parsed as if it were 1 and the
   real value is put back on the result.
3. ``draft_worker_common.resolve_draft_worker_attention_backend``: torch_native is not in upstream's list of draft
   attention backends, and the fallback (flashinfer) cannot run on CPU. For our worker, a requested
   ``torch_native`` backend is kept.
4. ``TorchNativeAttnBackend.forward_extend``: torch_native does not implement TARGET_VERIFY batches (DFlash runs
   both the draft block and the target verify as TARGET_VERIFY; their ``extend_prefix_lens`` are None and
   ``seq_lens`` excludes the block). Such a batch is presented to the unchanged extend kernel as what it is: an
   extend of ``draft_token_num`` tokens after ``seq_lens`` committed ones. Other modes are untouched.
5. ``ModelRunner._extend_forward_kwargs``: upstream casts ``forward_batch.input_embeds`` to bf16 unconditionally.
   DFlash feeds the draft its block embeddings that way, which breaks a float32 draft (dtype mismatch) and
   rounds the block embeddings. Only for the draft runner of a DominoWorker (marked with
   ``domino_keep_input_embeds_dtype``) the embeddings are passed in the runner's own dtype.
6. ``speculative_hook._resolve_speculative_algorithm_alias``: SGLang reads the draft's config.json through the
   HF hub helpers for *every* algorithm, before the registered ``validate_server_args`` runs, so a missing or
   config-less drafter would fail there with a hub error ("Repo id must be in the form ..."). For
   ``--speculative-algorithm domino`` only, the drafter checkpoint is checked first, with our one-line message.
7. ``TorchNativeAttnBackend._run_sdpa_forward_extend``: upstream pads each request's queries to its full length
   (square attention over the whole context); in a Domino process, extends that follow a cached prefix (the
   verify and the draft block of every speculative step) compute only the new tokens' rows
   (:func:`.attention.sdpa_new_tokens_only`, the same attention). Prefills without a prefix keep upstream's kernel.

Three more hooks are not Domino-specific: CPU fast paths (:mod:`.cpu_fast_paths`, same results) in every process
of SGLang's CPU engine (``SGLANG_USE_CPU_ENGINE=1``; never on GPUs) that loads the plugin, plain serving included,
so a benchmark compares plain, backbone and Domino servers on the same kernels:

8. ``UnquantizedLinearMethod.apply`` and 9. ``LogitsProcessor._compute_lm_head`` (its plain-weight branch): float32
   products of one or two rows as ``(W @ xᵀ)ᵀ``, of more rows through oneDNN with the weight packed once.
10. ``TorchNativeAttnBackend._run_sdpa_forward_decode``: the per-request key gather with ``index_select``.

Three more make ``--tp-size > 1`` work on SGLang's CPU engine, plain serving included (:mod:`.cpu_tp`): a default
thread binding of one even share of the cores per rank, the binding applied where upstream only warns, and gloo
groups without a PyNccl communicator.

One more, for Domino processes only (it acts on a batch the worker has tagged):

11. ``Sampler.forward``: a request's first token is sampled at prefill by SGLang's own sampler, which honours
    ``sampling_seed`` only under deterministic inference (refused by the CPU backend, and it asserts on min-p).
    For a Domino prefill batch holding seeded requests the worker lists their seeds on the batch's forward-only
    ``sampling_info`` (``domino_seeds``); this hook lets SGLang sample as usual, then replaces the seeded rows'
    tokens with the seeded rule every later token follows (``argmax(log p + G(seed, position))``,
    :func:`sglang_domino.sampling.seeded_choice`, p filtered as SGLang filters) and their returned logprob with
    SGLang's own convention for it. Later tokens are decided by the worker's verify rule
    (:func:`sglang_domino.verify.verify_seeded`).
"""

from __future__ import annotations

import contextlib
import contextvars
import copy
import logging
from typing import Any, Iterator

from sglang_domino.plugin import cpu_fast_paths, cpu_tp
from sglang_domino.plugin.attention import sdpa_new_tokens_only

logger = logging.getLogger(__name__)

building_domino_worker: contextvars.ContextVar[bool] = contextvars.ContextVar("building_domino_worker", default=False)


@contextlib.contextmanager
def domino_worker_scope() -> Iterator[None]:
    token = building_domino_worker.set(True)
    try:
        yield
    finally:
        building_domino_worker.reset(token)


def domino_is_active() -> bool:
    """True while a DominoWorker is built, or in a process whose speculative algorithm is DOMINO."""
    if building_domino_worker.get():
        return True
    try:
        from sglang.srt.runtime_context import get_spec

        return str(get_spec().speculative_algorithm or "").upper() == "DOMINO"
    except Exception:  # noqa: BLE001 - runtime context not published yet (launcher, tests)
        return False


# 1 -------------------------------------------------------------------------------------------------------------
_BF16_ONLY = "requires BF16"


def _validate_domino_runtime(original, *args: Any, **kwargs: Any):
    if not building_domino_worker.get():
        return original(*args, **kwargs)
    device = kwargs.get("device")
    if device is not None and getattr(device, "type", "cuda") != "cuda":
        import torch

        # Only the first check of the original reads `device`; keep all the others.
        kwargs["device"] = torch.device("cuda")
    try:
        return original(*args, **kwargs)
    except ValueError as exc:
        # The dtype check is the original's last statement: every structural check before it has passed.
        # Our rollout runs in any floating dtype (fp32 on CPU, for exact comparisons).
        if _BF16_ONLY in str(exc):
            return None
        raise


# 2 -------------------------------------------------------------------------------------------------------------
def _dflash_section(cfg: Any) -> tuple[Any, Any]:
    """(container, dflash_config mapping) of an HF config object or dict; (None, None) when absent."""
    if isinstance(cfg, dict):
        return cfg, cfg.get("dflash_config")
    return cfg, getattr(cfg, "dflash_config", None)


def _parse_dflash_draft_config(original, *args: Any, **kwargs: Any):
    if not domino_is_active():
        return original(*args, **kwargs)
    cfg = kwargs.get("draft_hf_config", args[0] if args else None)
    _, section = _dflash_section(cfg)
    real = None
    if isinstance(section, dict) and section.get("projector_type") == "domino":
        real = section.get("pure_draft_prefix_len")
    if real is None or real == 1:
        return original(*args, **kwargs)
    patched_cfg = copy.copy(cfg) if not isinstance(cfg, dict) else dict(cfg)
    patched_section = dict(section, pure_draft_prefix_len=1)
    if isinstance(patched_cfg, dict):
        patched_cfg["dflash_config"] = patched_section
    else:
        patched_cfg.dflash_config = patched_section
    result = original(draft_hf_config=patched_cfg)
    try:
        result.pure_draft_prefix_len = int(real)
    except Exception:  # noqa: BLE001 - a frozen result keeps 1; our worker reads the value from DominoConfig
        pass
    return result


# 3 -------------------------------------------------------------------------------------------------------------
def _resolve_draft_attention_backend(original, *args: Any, **kwargs: Any):
    if building_domino_worker.get():
        from sglang.srt.runtime_context import attention_backends, get_spec

        requested = get_spec().speculative_draft_attention_backend
        if requested is None:
            requested, _ = attention_backends()
        if requested == "torch_native":
            return "torch_native"
    return original(*args, **kwargs)


# 4 -------------------------------------------------------------------------------------------------------------
class _VerifyAsExtend:
    """A ForwardBatch seen as an extend: ``draft_token_num`` new tokens after ``seq_lens`` committed ones."""

    def __init__(self, forward_batch: Any, num_new: int) -> None:
        import torch

        self._fb = forward_batch
        committed = forward_batch.seq_lens
        self.extend_prefix_lens = committed
        self.extend_seq_lens = torch.full_like(committed, num_new)
        self.seq_lens = committed + num_new

    def __getattr__(self, name: str) -> Any:
        return getattr(self._fb, name)


def _torch_native_forward_extend(original, self, q, k, v, layer, forward_batch, *args: Any, **kwargs: Any):
    mode = getattr(forward_batch, "forward_mode", None)
    if (mode is not None and mode.is_target_verify() and forward_batch.extend_prefix_lens is None
            and forward_batch.spec_info is not None):
        num_new = int(forward_batch.spec_info.draft_token_num)
        forward_batch = _VerifyAsExtend(forward_batch, num_new)
    return original(self, q, k, v, layer, forward_batch, *args, **kwargs)


def _torch_native_sdpa_extend(original, self, query, output, k_cache, v_cache, req_to_token, req_pool_indices,
                              seq_lens, extend_prefix_lens, extend_seq_lens, encoder_lens=None, scaling=None,
                              enable_gqa=False, causal=False, is_cross_attn=False, sliding_window_size=None,
                              **kwargs: Any):
    plain = (encoder_lens is None and not is_cross_attn and not kwargs
             and (sliding_window_size is None or sliding_window_size < 0))
    # Prefill without a cached prefix stays upstream's (already square, and bit-identical to a plain server).
    if plain and domino_is_active() and bool((extend_prefix_lens > 0).any()):
        return sdpa_new_tokens_only(query, output, k_cache, v_cache, req_to_token, req_pool_indices, seq_lens,
                                    extend_prefix_lens, extend_seq_lens, scaling=scaling, enable_gqa=enable_gqa,
                                    causal=causal)
    return original(self, query, output, k_cache, v_cache, req_to_token, req_pool_indices, seq_lens,
                    extend_prefix_lens, extend_seq_lens, encoder_lens, scaling=scaling, enable_gqa=enable_gqa,
                    causal=causal, is_cross_attn=is_cross_attn, sliding_window_size=sliding_window_size, **kwargs)


# 5 -------------------------------------------------------------------------------------------------------------
def _extend_forward_kwargs(original, self, forward_batch, *args: Any, **kwargs: Any):
    result = original(self, forward_batch, *args, **kwargs)
    embeds = getattr(forward_batch, "input_embeds", None)
    if (getattr(self, "domino_keep_input_embeds_dtype", False) and embeds is not None
            and isinstance(result, dict) and "input_embeds" in result):
        result["input_embeds"] = embeds.to(self.dtype)
    return result


# 6 -------------------------------------------------------------------------------------------------------------
def _resolve_speculative_algorithm_alias(original, speculative_algorithm=None, speculative_draft_model_path=None,
                                         *args: Any, **kwargs: Any):
    if isinstance(speculative_algorithm, str) and speculative_algorithm.upper() == "DOMINO":
        from sglang_domino.plugin.validate import check_drafter_checkpoint

        check_drafter_checkpoint(speculative_draft_model_path)
    return original(speculative_algorithm, speculative_draft_model_path, *args, **kwargs)


# 11 ------------------------------------------------------------------------------------------------------------
SEEDS_ATTR = "domino_seeds"


def _sampler_forward(original, self, logits_output, sampling_info, return_logprob, top_logprobs_nums,
                     token_ids_logprobs, positions, *args: Any, **kwargs: Any):
    seeds = getattr(sampling_info, SEEDS_ATTR, None)
    if (seeds is None or all(seed is None for seed in seeds) or len(seeds) != len(sampling_info)
            or sampling_info.has_custom_logit_processor or logits_output.next_token_logits is None):
        return original(self, logits_output, sampling_info, return_logprob, top_logprobs_nums, token_ids_logprobs,
                        positions, *args, **kwargs)
    import torch

    from sglang_domino.sampling import SeededRows, filtered_probs, sampling_params_from_batch, seeded_choice

    device = logits_output.next_token_logits.device
    # The sampler's positions are those of the last prompt token; the token drawn sits one further.
    seeded = SeededRows.of_batch(seeds, positions.to(device, torch.int64) + 1)  # not None: a row has a seed
    rows = seeded.rows
    # The logits as the sampler receives them (penalties, bias and grammar already applied; it edits them in place).
    logits = logits_output.next_token_logits[rows].to(torch.float32)
    token_ids = original(self, logits_output, sampling_info, return_logprob, top_logprobs_nums, token_ids_logprobs,
                         positions, *args, **kwargs)
    params = sampling_params_from_batch(sampling_info, len(seeds))
    if params is None:  # an all-greedy batch: the seed changes nothing
        return token_ids
    params = params.select(rows)
    chosen = seeded_choice(filtered_probs(logits, params)[:, None], seeded.seeds, seeded.first_position[:, None])[:, 0]
    token_ids[rows.to(token_ids.device)] = chosen.to(token_ids.device, token_ids.dtype)
    logprobs = getattr(logits_output, "next_token_logprobs", None)
    if return_logprob and logprobs is not None:
        # SGLang's convention for a sampled token: log softmax(logits / T), before top-k / top-p / min-p.
        temperature = torch.where(params.is_greedy, torch.ones_like(params.temperature), params.temperature)
        own = torch.log_softmax(logits / temperature[:, None].to(logits.device), dim=-1)
        logprobs[rows.to(logprobs.device)] = own.gather(1, chosen[:, None])[:, 0].to(logprobs.device, logprobs.dtype)
    return token_ids


# 15 ------------------------------------------------------------------------------------------------------------
def _req_update_finish_state(original, self, new_accepted_len: int = 1, *args: Any, **kwargs: Any):
    """A multi-token step finishes where plain decoding would have: at the EARLIEST stop.

    Upstream (``Req.update_finish_state``, ``managers/schedule_batch.py:2012-2048``) checks stop strings first and,
    if one matched anywhere in the step, finishes there -- at the first stop string in list order -- even when an
    EOS / stop token or another stop string ended the request earlier in the same step. Plain decoding checks after
    every token, so it would stop at the earlier one: a speculative step accepting [.., EOS, x, y] with a stop string
    ending at y emitted x and y (found by the request fuzzer: ``stop token / EOS 2 at 17 of 20 did not end the
    request``, ``tests/plugin/test_finish_state.py`` reproduces it on upstream's ``Req``). After upstream's rule, this
    moves the finish to the earliest stop in the step (a stop string and an EOS on the same token: the string, as
    plain decoding's order has it). Steps of one token (plain decoding) are untouched; regex stops keep upstream's
    rule."""
    original(self, new_accepted_len, *args, **kwargs)
    if new_accepted_len <= 1 or not self.finished() or self.finished_len is None:
        return
    from sglang.srt.managers.schedule_batch import FINISH_MATCHED_STR

    step_start = len(self.output_ids) - new_accepted_len
    earliest: list[tuple[int, int, Any]] = []  # (finished_len, 0 = string first on a tie, reason)
    if self.sampling_params.stop_strs:
        tail = self.tail_str(new_accepted_len)
        for stop_str in self.sampling_params.stop_strs:
            if stop_str and stop_str in tail:
                end = self._locate_str_stop_finished_len(new_accepted_len, stop_str=stop_str)
                if end is not None:
                    earliest.append((end, 0, FINISH_MATCHED_STR(matched=stop_str)))
    # Upstream's own token test over the whole step; it writes the first stop token's finish, read and restored.
    finish = self.finished_reason, self.finished_len
    if self._check_token_based_finish(self.output_ids[step_start:]):
        earliest.append((self.finished_len, 1, self.finished_reason))
    self.finished_reason, self.finished_len = finish
    if earliest:
        end, _, reason = min(earliest, key=lambda e: (e[0], e[1]))
        if end < self.finished_len:
            self.finished_reason, self.finished_len = reason, end
            self._cap_finished_len_at_max_new_tokens()


# Domino's hooks: every process that loads the plugin (each acts only for Domino, see above).
DOMINO_HOOKS = (
    ("sglang.srt.managers.schedule_batch.Req.update_finish_state", _req_update_finish_state),
    ("sglang.srt.speculative.domino_utils.validate_domino_runtime", _validate_domino_runtime),
    ("sglang.srt.speculative.dflash_utils.parse_dflash_draft_config", _parse_dflash_draft_config),
    ("sglang.srt.speculative.draft_worker_common.resolve_draft_worker_attention_backend",
     _resolve_draft_attention_backend),
    ("sglang.srt.layers.attention.torch_native_backend.TorchNativeAttnBackend.forward_extend",
     _torch_native_forward_extend),
    ("sglang.srt.layers.attention.torch_native_backend.TorchNativeAttnBackend._run_sdpa_forward_extend",
     _torch_native_sdpa_extend),
    ("sglang.srt.model_executor.model_runner.ModelRunner._extend_forward_kwargs", _extend_forward_kwargs),
    ("sglang.srt.arg_groups.speculative_hook._resolve_speculative_algorithm_alias",
     _resolve_speculative_algorithm_alias),
    ("sglang.srt.layers.sampler.Sampler.forward", _sampler_forward),
)
# The CPU fast paths (8-10): only in processes of SGLang's CPU engine (SGLANG_USE_CPU_ENGINE=1), never on GPUs.
CPU_HOOKS = (
    ("sglang.srt.layers.quantization.unquant.UnquantizedLinearMethod.apply", cpu_fast_paths.unquantized_linear_apply),
    ("sglang.srt.layers.logits_processor.LogitsProcessor._compute_lm_head", cpu_fast_paths.compute_lm_head),
    ("sglang.srt.layers.attention.torch_native_backend.TorchNativeAttnBackend._run_sdpa_forward_decode",
     cpu_fast_paths.sdpa_decode),
)
# CPU tensor parallelism (:mod:`.cpu_tp`: thread binding, gloo groups without PyNccl): only on SGLang's CPU engine.
CPU_TP_HOOKS = cpu_tp.HOOKS
HOOKS = DOMINO_HOOKS + CPU_HOOKS + CPU_TP_HOOKS


def hooks_for_process(cpu_engine: bool) -> tuple:
    """The hooks this process gets: Domino's, plus the CPU fast paths and CPU tensor parallelism on SGLang's CPU
    engine."""
    return DOMINO_HOOKS + (CPU_HOOKS + CPU_TP_HOOKS if cpu_engine else ())


_registered = False


def register_hooks() -> None:
    """Register this process's hooks once (``load_plugins`` applies them right after the plugins ran)."""
    global _registered
    if _registered:
        return
    from sglang.srt.plugins.hook_registry import HookRegistry, HookType

    from sglang_domino.plugin.cpu_sgl_kernel import cpu_engine_selected

    for target, fn in hooks_for_process(cpu_engine_selected()):
        HookRegistry.register(target, fn, HookType.AROUND)
    _registered = True


__all__ = ["CPU_HOOKS", "CPU_TP_HOOKS", "DOMINO_HOOKS", "HOOKS", "SEEDS_ATTR", "building_domino_worker",
           "domino_worker_scope", "hooks_for_process", "register_hooks"]
