"""DominoWorker: SGLang's ``DFlashWorkerV2`` with the Domino rollout and chain verification of this package.

What is reused from upstream, unchanged: the whole scheduling contract of ``DFlashWorkerV2`` -- target prefill
with hidden-state capture at the draft's ``target_layer_ids``, the draft K/V of the context kept in SGLang's
memory pools (written from the captured target hidden states, only for committed tokens), the backbone
forward of the block ``[bonus, MASK × (B−1)]`` through the draft model runner, the target verify forward,
logits adjustments (penalties, logit bias, grammar masks), logprobs, KV bookkeeping of rejected slots, and the
next-draft-input plumbing. ``DFlashDraftModel`` loads the checkpoint (backbone + ``prefix_gru`` / ``embed_proj``).

What is overridden, and why:

* drafting (``_propose_selector_block``): upstream's Domino rollout is greedy-only, restricted to
  ``pure_draft_prefix_len == 1``, to CUDA/bf16, and by default to a top-2048 candidate pool. We call
  :func:`sglang_domino.rollout.draft_from_hidden` instead: exact full-vocabulary correction, any
  ``pure_draft_prefix_len``, any device and dtype, and -- for sampled requests -- drafts drawn from the filtered
  draft distribution, whose probabilities are kept for verification. Upstream dispatches to this method when
  ``self.selector`` is set, so the worker sets it to a marker (:data:`DOMINO_PROPOSER`) and clears
  ``_is_domino`` so that upstream's own rollout never runs.
* verification (``_accept_block``): :func:`sglang_domino.verify.verify_greedy` /
  :func:`~sglang_domino.verify.verify_sampling` (lossless speculative sampling with the real draft
  probabilities; upstream treats a Domino draft as a point mass).
* ``_maybe_build_draft_sampler``: upstream would fold its own greedy rollout into the draft CUDA graph; we keep
  the backbone graph and run the rollout after it.
* ``forward_batch_generation``: only on devices without streams (CPU), lets upstream's
  ``seq_lens.record_stream(...)`` be a no-op for that one tensor, then defers to upstream at the width the
  width rule picks for the step (:mod:`.draft_width`, ``$SGLANG_DOMINO_MAX_SPECULATIVE_BATCH``): the configured
  width, a narrower one (fewer drafts, fewer verified rows), or a plain-width step (one token per request, no draft
  forward, the drafter's context still fed).

Under tensor parallelism (``--tp-size > 1``) the target's lm_head and embedding are vocabulary-parallel: drafting
takes this rank's :class:`~sglang_domino.vocab_parallel.VocabShard` (:func:`target_vocab_shard`) and W2's rows of it
(:meth:`DominoWorker.domino_head`); every rank drafts the same tokens. Verdicts are broadcast from rank 0 through
upstream's ``SpecTpSync`` sites, the width of a step is rank 0's, and only rank 0 writes the diagnostic logs.

Hooks that must act inside ``DFlashWorkerV2.__init__`` are in :mod:`.hooks`.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from typing import Any, Optional

import torch

from sglang.srt.lora.layers import unwrap_lora_layer
from sglang.srt.speculative.dflash_worker_v2 import (
    DFlashWorkerV2,
    _commit_accept,
    _resolve_dflash_embedding_module,
)
from sglang.srt.speculative.draft_worker_common import build_block_pos_offsets, make_draft_block_spec_info
from sglang.srt.speculative.spec_tp_sync import SpecTpSyncSite

from sglang_domino.kernels import DominoHeadWeights, cpu_linear
from sglang_domino.plugin import cpu_fast_paths
from sglang_domino.plugin.deferred_context import DeferredContext
from sglang_domino.plugin.draft_width import (
    WIDTH_ATTRS,
    FixedWidthRule,
    WidthStates,
    is_default_setting,
    width_rule,
)
from sglang_domino.plugin.hooks import SEEDS_ATTR, domino_worker_scope
from sglang_domino.rollout import draft_from_hidden, draft_logits_dtype, drafting_lm_head
from sglang_domino.sampling import SamplingParams, SeededRows, sampling_params_from_batch
from sglang_domino.settings import DRAFT_LOGITS_DTYPE_ENV, MAX_SPECULATIVE_BATCH_ENV, DominoSettings, server_settings
from sglang_domino.verify import VerifyResult, accepted_prefix_len, verify_greedy, verify_sampling, verify_seeded
from sglang_domino.vocab_parallel import VocabShard

logger = logging.getLogger(__name__)



class _DominoProposer:
    """Marker stored in ``DFlashWorkerV2.selector``: upstream then routes drafting to ``_propose_selector_block``."""

    top_k = 0

    def __bool__(self) -> bool:
        return True

    def __repr__(self) -> str:
        return "DominoProposer"


DOMINO_PROPOSER = _DominoProposer()


def request_seeds(reqs: list) -> list[Optional[int]]:
    """Each request's ``sampling_seed`` (None where it has none), in batch order."""
    return [getattr(getattr(req, "sampling_params", None), "sampling_seed", None) for req in reqs]


def refuse_online_weight_updates(lm_head: torch.nn.Module, drafting_dtype: torch.dtype) -> None:
    """Make SGLang refuse online weight updates while drafts use a converted copy of ``lm_head``.

    The copy would silently go stale (outputs stay exact -- the target verifies with its live head -- but
    acceptance would fall); see :func:`sglang_domino.plugin.cpu_fast_paths.refuse_online_weight_updates`.
    """
    cpu_fast_paths.refuse_online_weight_updates(
        lm_head,
        f"Online weight updates are not supported while Domino drafts with a "
        f"{str(drafting_dtype).removeprefix('torch.')} copy of the target's lm_head: the copy would keep the old "
        f"weights. Restart the server with {DRAFT_LOGITS_DTYPE_ENV}=float32 to use online weight updates.",
    )


def target_vocab_shard(lm_head: torch.nn.Module, embed: torch.nn.Module, vocab_size: int) -> Optional[VocabShard]:
    """This rank's :class:`~sglang_domino.vocab_parallel.VocabShard` of the target's vocabulary-parallel ``lm_head``
    (None when it is not sharded). The embedding must be sharded the same way: drafting looks tokens up in it by the
    lm_head's rows."""
    tp_size = int(getattr(lm_head, "tp_size", 1) or 1)
    if tp_size == 1:
        return None
    from sglang.srt.runtime_context import get_parallel

    group = get_parallel().tp_group
    indices = lm_head.shard_indices  # layers/vocab_parallel_embedding.VocabParallelEmbeddingShardIndices
    if indices.num_added_elements_padded:
        raise RuntimeError("Domino under tensor parallelism: a head with added (LoRA) vocabulary is not supported")
    if int(group.world_size) != tp_size:
        raise RuntimeError(f"Domino: the target's lm_head is split {tp_size} ways, its TP group has "
                           f"{group.world_size} ranks")
    if getattr(embed, "shard_indices", None) != indices or int(getattr(embed, "tp_size", 1) or 1) != tp_size:
        raise RuntimeError("Domino under tensor parallelism: the target's input embedding is not sharded like its "
                           "lm_head (drafting looks the drafted tokens up by the lm_head's vocabulary rows)")
    rows = int(lm_head.num_embeddings_per_partition)
    if int(indices.padded_org_vocab_start_index) != int(group.rank_in_group) * rows:
        raise RuntimeError(f"Domino under tensor parallelism: rank {group.rank_in_group}'s lm_head rows start at "
                           f"{indices.padded_org_vocab_start_index}, not at rank x {rows} (shards must be equal, "
                           f"contiguous and in rank order)")
    return VocabShard(group, int(indices.padded_org_vocab_start_index), rows, int(vocab_size))


class DominoWorker(DFlashWorkerV2):
    """``--speculative-algorithm domino``: DFlash backbone + Domino head, exact and lossless."""

    # Class defaults: upstream's __init__ may write the drafter's context (our override) before ours sets them.
    _deferred_context: Optional[DeferredContext] = None
    _defer_context_writes: bool = False

    def __init__(self, server_args, gpu_id: int, nccl_port: int, target_worker) -> None:
        with domino_worker_scope():
            super().__init__(server_args=server_args, gpu_id=gpu_id, nccl_port=nccl_port,
                             target_worker=target_worker)
        from sglang.srt.arg_groups.overrides import resolving_view

        # Every Domino setting, resolved once in this process (drafter checkpoint + SGLANG_DOMINO_* variables).
        self.settings: DominoSettings = server_settings(resolving_view(server_args).speculative_draft_model_path)
        self.domino_config = self.settings.drafter
        # Route drafting through _propose_selector_block; upstream's own Domino rollout must never run.
        self._is_domino = False
        self.selector = DOMINO_PROPOSER
        self._selector_sample = None
        # (draft probabilities, sampling parameters, seeded rows) of the block being verified
        self._domino_pending: Optional[tuple[Optional[torch.Tensor], Optional[SamplingParams],
                                             Optional[SeededRows]]] = None
        self._domino_batch = None
        self._no_streams = torch.device(self.device).type == "cpu"
        if torch.device(self.device).type != "cuda":
            # The fused qk-norm+rope Triton path (bf16 + neox) launches GPU kernels; use the plain branch.
            for layer in self.draft_model.layers:
                if getattr(layer.self_attn, "use_table_qk_norm_rope", False):
                    layer.self_attn.use_table_qk_norm_rope = False
        # Debug/test logs: one JSON line per verified request-block (rid, position, bonus, drafts, accept_len,
        # sampling parameters) / per decode step (batch size, width, committed tokens, worker seconds).
        # Under tensor parallelism only rank 0 writes them (every rank verifies the same rows).
        rank0 = int(getattr(self, "_target_tp_rank", 0) or 0) == 0
        self._draft_log_path = self.settings.env.draft_log if rank0 else None
        self._step_log_path = self.settings.env.step_log if rank0 else None
        self._log_lock = threading.Lock()
        # Upstream casts the block embeddings to bf16 before every draft forward; keep the draft's own dtype
        # (fp32 serving) -- see hooks._extend_forward_kwargs.
        self.draft_model_runner.domino_keep_input_embeds_dtype = True
        # (the sliced head it was made from, its weight_copy_key, the drafting copy)
        self._drafting_lm_head: Optional[tuple[torch.Tensor, tuple, torch.Tensor]] = None
        self._draft_temperature_scale = self.settings.env.draft_temperature_scale
        self._widths = WidthStates(self, self._fresh_width_state)
        device_type = torch.device(self.device).type
        self._width_rule = width_rule(device_type, self._widths.full_width, self.settings.env.max_speculative_batch)
        self._step_commit_lens: Optional[torch.Tensor] = None  # [bs] tokens the current step commits
        self._step_target_forward = "verify"  # how the current step's target forward ran (the step log says)
        # CPU: plain-width steps stash their context writes; the next drafting step writes them in one batch.
        # (A windowed drafter rebuilds its draft view each step from its own slots: not deferred.)
        self._deferred_context: Optional[DeferredContext] = (
            DeferredContext() if (device_type == "cpu" and self.settings.env.deferred_context
                                  and not self.use_compact_draft_cache and self.lilicorr is None) else None)
        self._defer_context_writes = False  # True during a plain-width step when _deferred_context is on
        # CPU: a plain-width step's one-token verify runs as a decode forward (see _verify_one_token_as_decode).
        self._plain_width_as_decode = device_type == "cpu"
        runner = getattr(self.target_worker.model_runner, "decode_cuda_graph_runner", None)
        if runner is not None and device_type == "cpu" and not self._width_rule.always_drafts:
            # The CPU graph runner keys its graphs on the batch size only: it would replay a width-B verify
            # graph for a plain-width step.
            if not is_default_setting(self.settings.env.max_speculative_batch):
                raise RuntimeError(
                    f"Domino: {MAX_SPECULATIVE_BATCH_ENV} (plain-width steps for large batches) cannot be combined "
                    f"with CPU graphs (--enable-torch-compile); set {MAX_SPECULATIVE_BATCH_ENV}=none")
            self._width_rule = FixedWidthRule(self._widths.full_width, None)  # the default yields to CPU graphs
        target_lm_head_module = unwrap_lora_layer(self.target_worker.model_runner.model.lm_head)
        # Under --tp-size > 1: this rank's vocabulary rows of the target's lm_head / embedding (and W2's).
        self._vocab_shard = target_vocab_shard(target_lm_head_module, self._target_embedding(),
                                               int(self.model_runner.model_config.vocab_size))
        self._head: Optional[DominoHeadWeights] = None
        head = self.domino_head()
        target_lm_head = target_lm_head_module.weight
        drafting_dtype = draft_logits_dtype(target_lm_head, self.settings.env.draft_logits_dtype)
        if drafting_dtype != target_lm_head.dtype:
            refuse_online_weight_updates(target_lm_head_module, drafting_dtype)
        elif cpu_linear.applies(target_lm_head[:1].detach(), target_lm_head.detach()) and cpu_linear.enabled():
            # Drafting's base-logit GEMM keeps a oneDNN-packed copy of the head (kernels.cpu_linear.linear).
            cpu_fast_paths.refuse_online_weight_updates(target_lm_head_module, cpu_fast_paths.PACKED_WEIGHTS_REFUSAL)
        if device_type == "cpu":
            # Convert/pack the drafting head and the drafter's linears now: done lazily, the first drafting step
            # took seconds (2.3 s for the float32 head on an AVX2 machine) -- in a user's first request, and in
            # the adaptive width rule's first measurement.
            drafting_head = self._target_weights(target_lm_head_module)[1]
            cpu_linear.prepack(cpu_linear.weight_owner(drafting_head), drafting_head)
            cpu_fast_paths.prepack_linears(self.draft_model)
        if device_type == "cuda" and head is not None and self._vocab_shard is None:
            self._capture_correction_graphs(server_args, head, target_lm_head_module)
        logger.info(
            "Domino worker ready: block_size=%d, shift_label=%s, pure_draft_prefix_len=%d, head=%s, device=%s, "
            "draft logits in %s (target lm_head %s), exact full-vocabulary correction%s, sampled drafts at %.2f x the "
            "request temperature verified with their probabilities, %s",
            self.block_size, self.domino_config.shift_label, self.domino_config.pure_draft_prefix_len,
            "domino" if head is not None else "none (plain DFlash backbone)", self.device,
            str(drafting_dtype).removeprefix("torch."),
            str(target_lm_head.dtype).removeprefix("torch."),
            "" if self._vocab_shard is None else (
                f" over {self._vocab_shard.group.world_size} vocabulary shards (this rank: ids "
                f"{self._vocab_shard.start}..{self._vocab_shard.start + self._vocab_shard.valid_rows - 1})"),
            self._draft_temperature_scale,
            self._width_rule.describe(),
        )

    def _capture_correction_graphs(self, server_args, head: DominoHeadWeights, lm_head_module) -> None:
        """Capture the greedy correction loop's CUDA graphs now, at worker start -- right after SGLang's own graph
        phase, before the first request -- for SGLang's decode batch sizes up to ``--max-running-requests``.
        A bucket whose capture fails runs uncaptured on its own (logged once); none is captured in a request.

        Unverified here (no GPU yet): ``scripts/gpu_check.py`` checks the runner on CUDA; this call's arguments
        are those :func:`sglang_domino.rollout.draft_from_hidden` passes to :func:`sglang_domino.kernels.
        correction_loop`, which finds the runner by them."""
        from sglang.srt.arg_groups.overrides import resolving_view

        from sglang_domino.kernels import triton_available
        from sglang_domino.kernels.cuda_graph import prepare_graph_runner, sglang_decode_batch_sizes

        cfg = resolving_view(server_args)
        if getattr(cfg, "disable_cuda_graph", False) or not triton_available():
            logger.info("Domino: correction loop without CUDA graphs (%s)",
                        "--disable-cuda-graph" if triton_available() else "Triton unavailable")
            return
        limit = int(getattr(cfg, "max_running_requests", None) or 48)
        buckets = tuple(b for b in sglang_decode_batch_sizes(server_args) if b <= limit)
        embed_weight, drafting_head = self._target_weights(lm_head_module)
        dtype = self.draft_model_runner.dtype  # the backbone's hidden states; base logits are cast to it
        try:
            runner, report = prepare_graph_runner(
                head, embed_weight, int(self.domino_config.pure_draft_prefix_len), int(self.block_size) - 1,
                int(drafting_head.shape[0]), int(self.domino_config.hidden_size), base_dtype=dtype, z_dtype=dtype,
                buckets=buckets)
        except Exception as exc:  # noqa: BLE001 - drafting stays exact uncaptured; say why graphs are off
            logger.warning("Domino: correction-loop CUDA graphs not captured (%r); running uncaptured", exc)
            return
        logger.info("Domino: correction-loop CUDA graphs for batch sizes %s captured in %.1f s (static buffers "
                    "%.0f MB, graph pool %s MB)%s", list(report.captured), report.seconds,
                    report.static_bytes / 2**20,
                    "?" if report.graph_bytes is None else f"{report.graph_bytes / 2**20:.0f}",
                    f"; failed, uncaptured: {list(report.failed)}" if report.failed else "")

    # ---------------------------------------------------------------- weights
    def domino_head(self) -> Optional[DominoHeadWeights]:
        """The Domino head as drafting uses it; under tensor parallelism W2 holds this rank's vocabulary rows (a
        copy made once: upstream loads W2 whole on every rank)."""
        gru, proj = getattr(self.draft_model, "prefix_gru", None), getattr(self.draft_model, "embed_proj", None)
        if gru is None or proj is None:
            return None
        head = DominoHeadWeights(w_ih=gru.weight_ih_l0, w_hh=gru.weight_hh_l0, w1=proj[0].weight, w2=proj[2].weight)
        if self._vocab_shard is None:
            return head
        if self._head is None:
            self._head = DominoHeadWeights(w_ih=head.w_ih, w_hh=head.w_hh, w1=head.w1,
                                           w2=self._vocab_shard.local_rows(head.w2.detach()))
        return self._head

    def _target_embedding(self) -> torch.nn.Module:
        return unwrap_lora_layer(_resolve_dflash_embedding_module(self.draft_model,
                                                                  self.target_worker.model_runner.model))

    def _target_weights(self, lm_head) -> tuple[torch.Tensor, torch.Tensor]:
        """(embed [V, H], drafting lm_head [V, H]); the latter in the drafting precision, converted once.

        The converted copy is keyed by :func:`~sglang_domino.kernels.cpu_linear.weight_copy_key` of the sliced
        head (held with it): a swapped tensor or an autograd-visible in-place write re-converts it. SGLang's online weight loaders write through ``param.data``, which
        no counter sees; while a converted copy exists those updates are refused instead
        (:func:`refuse_online_weight_updates`)."""
        vocab = int(self.model_runner.model_config.vocab_size)
        embed = self._target_embedding()
        if self._vocab_shard is not None:  # this rank's rows, padding included (masked when drafting)
            vocab = self._vocab_shard.rows
        weight = lm_head.weight[:vocab]
        key = cpu_linear.weight_copy_key(weight)
        if self._drafting_lm_head is None or self._drafting_lm_head[1] != key:
            self._drafting_lm_head = (weight, key, drafting_lm_head(weight, self.settings.env.draft_logits_dtype))
        return embed.weight[:vocab], self._drafting_lm_head[2]

    # ------------------------------------------------------------- overrides
    def _maybe_build_draft_sampler(self):
        # The draft CUDA graph (if any) captures the backbone only; the rollout runs after it.
        return None

    def _fresh_width_state(self, width: int) -> dict[str, Any]:
        """:data:`~sglang_domino.plugin.draft_width.WIDTH_ATTRS` of a width not used yet (buffers lazy)."""
        state = {name: None for name in WIDTH_ATTRS}
        state.update(block_size=width, speculative_num_draft_tokens=width,
                     _block_pos_offsets=build_block_pos_offsets(length=width, device=self.device),
                     _draft_block_spec_info=make_draft_block_spec_info(draft_token_num=width, device=self.device))
        return state

    def forward_batch_generation(self, batch, on_publish=None, grammar_barrier=None, pp_proxy_tensors=None):
        self._domino_batch = batch
        seq_lens = getattr(batch, "seq_lens", None)
        shimmed = False
        decode = not (batch.forward_mode.is_extend() or batch.is_extend_in_batch or batch.forward_mode.is_idle())
        if self._no_streams and isinstance(seq_lens, torch.Tensor) and not batch.forward_mode.is_extend():
            # Upstream records the carried-over seq_lens on the current CUDA stream; a CPU tensor has no stream
            # and Tensor.record_stream rejects it. An instance attribute shadows the method for this tensor only.
            seq_lens.record_stream = lambda stream: None
            shimmed = True
        batch_size = len(batch.seq_lens)
        width = self._width_rule.width(batch_size) if decode else None
        if width is not None and self._vocab_shard is not None and not self._width_rule.always_drafts:
            # Every rank must run the step at the same width; a measuring rule sees each rank's own timings.
            width = self._same_on_every_rank(width)
        plain_width = width == 1
        if width is not None:
            self._widths.use(width)
        if plain_width:
            # Nothing to draft: skip the backbone forward (its scratch KV would be overwritten by the context
            # append anyway); upstream reads only these two fields of its result.
            self.draft_model_runner.forward = _no_draft_forward
            self._defer_context_writes = self._deferred_context is not None
            if self._plain_width_as_decode:
                self.target_worker.forward_batch_generation = self._verify_one_token_as_decode
        late_rows = 0
        if width is not None and not plain_width and self._deferred_context is not None:
            # A drafting step reads the drafter's context: write what plain-width steps stashed first. Not part of
            # the step's measured seconds (the width rule compares widths, not when earlier tokens get written).
            late_rows = self._deferred_context.flush(self._append_context_now)
        self._step_commit_lens = None
        self._step_target_forward = "verify"
        if not decode and batch.sampling_info is not None:
            # Seeded requests: SGLang's sampler draws their first token with the seed (hooks._sampler_forward).
            seeds = request_seeds(batch.reqs)
            if any(seed is not None for seed in seeds):
                setattr(batch.sampling_info, SEEDS_ATTR, seeds)
        started = time.perf_counter()
        try:
            result = super().forward_batch_generation(batch, on_publish=on_publish, grammar_barrier=grammar_barrier,
                                                      pp_proxy_tensors=pp_proxy_tensors)
            if width is not None and self._step_commit_lens is not None and (self._width_rule.measures
                                                                              or self._step_log_path):
                tokens = int(self._step_commit_lens.sum())  # first: on a GPU this waits for the step to finish
                seconds = time.perf_counter() - started
                change = self._width_rule.record(batch_size, width, tokens, seconds)
                if change:
                    logger.info(change)
                if self._step_log_path:
                    self._append_log(self._step_log_path, [{"batch_size": batch_size, "width": width,
                                                            "tokens": tokens, "seconds": round(seconds, 6),
                                                            "context_written_late": late_rows,
                                                            "target_forward": self._step_target_forward}])
            return result
        finally:
            if plain_width:
                del self.draft_model_runner.forward
                self._defer_context_writes = False
                if self._plain_width_as_decode:
                    del self.target_worker.forward_batch_generation
            if width is not None:
                self._widths.use(self._widths.full_width)
            if shimmed:
                del seq_lens.record_stream
            self._domino_batch = None
            self._domino_pending = None

    def _verify_one_token_as_decode(self, batch=None, forward_batch=None, *args, **kwargs):
        """The target worker's ``forward_batch_generation`` during a plain-width step on CPU.

        Upstream verifies a plain-width step's one token per request as a TARGET_VERIFY forward, an extend: on
        the CPU that is the extend attention path, the verify logits path and a re-planned extend, measurably
        slower than the same token as a decode (docs/design.md, "What a plain-width step costs"). A one-token
        verify *is* a decode -- the request's bonus at position ``committed``, attending to its ``committed + 1``
        keys, its K/V written to the same slot -- so the forward runs as one: mode DECODE, device ``seq_lens``
        counting the new token (upstream's verify host lengths already do: committed + width). Logits, captured
        hidden states and the KV written are the decode's; what upstream does with them after is unchanged."""
        from sglang.srt.model_executor.forward_batch_info import ForwardMode

        if (forward_batch is not None and forward_batch.forward_mode == ForwardMode.TARGET_VERIFY
                and int(getattr(forward_batch.spec_info, "draft_token_num", 0)) == 1):
            forward_batch.forward_mode = ForwardMode.DECODE
            forward_batch.seq_lens = forward_batch.seq_lens + 1
            self._step_target_forward = "decode"
        return type(self.target_worker).forward_batch_generation(self.target_worker, batch, forward_batch, *args,
                                                                 **kwargs)

    def _append_target_hidden_to_draft_kv_by_loc(self, *, target_hidden: torch.Tensor, cache_loc: torch.Tensor,
                                                 positions: torch.Tensor, cache_loc_2d: Optional[torch.Tensor] = None,
                                                 commit_lens: Optional[torch.Tensor] = None,
                                                 extend_lens: Optional[torch.Tensor] = None) -> None:
        """Upstream's drafter-context write; in a plain-width step on CPU, stashed instead (:mod:`.deferred_context`).

        cache_loc [n] draft-pool slots, positions [n], target_hidden [n(+padding), D]; at plain width n = batch
        size and every row commits (its bonus)."""
        deferred = self._deferred_context
        if (self._defer_context_writes and deferred is not None
                and (commit_lens is None or bool((commit_lens == 1).all()))):
            n = int(cache_loc.numel())
            deferred.defer(target_hidden[:n], cache_loc, positions, self._append_context_now)
            return
        if deferred is not None:
            deferred.written(cache_loc)
        super()._append_target_hidden_to_draft_kv_by_loc(
            target_hidden=target_hidden, cache_loc=cache_loc, positions=positions, cache_loc_2d=cache_loc_2d,
            commit_lens=commit_lens, extend_lens=extend_lens)

    def _append_context_now(self, hidden: torch.Tensor, slots: torch.Tensor, positions: torch.Tensor) -> None:
        """Write the drafter's context KV of ``hidden`` [n, D] at ``slots`` / ``positions`` [n] (upstream's writer)."""
        super()._append_target_hidden_to_draft_kv_by_loc(target_hidden=hidden, cache_loc=slots, positions=positions)

    def clear_cache_pool(self):
        # The KV pool was reset: stashed context writes name slots that mean nothing now.
        if self._deferred_context is not None:
            self._deferred_context.clear()
        super().clear_cache_pool()

    def _same_on_every_rank(self, value: int) -> int:
        """``value`` as tensor-parallel rank 0 has it."""
        shared = torch.tensor([value], dtype=torch.int64, device=self.device)
        return int(self._vocab_shard.group.broadcast(shared, src=0)[0])

    def _propose_selector_block(self, *, draft_logits_output, bs: int, lm_head, anchor_token_ids: torch.Tensor,
                                sampling_info) -> torch.Tensor:
        """Draft B−1 tokens per request from the backbone output: :func:`sglang_domino.rollout.draft_from_hidden`."""
        block_size = int(self.block_size)
        params = sampling_params_from_batch(sampling_info, bs)
        seeded = self._seeded_rows(bs) if params is not None else None
        if block_size == 1:  # a plain-width step: no drafts, the target's own token is emitted
            vocab = int(self.model_runner.model_config.vocab_size)
            probs = torch.empty((bs, 0, vocab), dtype=torch.float32, device=anchor_token_ids.device)
            self._domino_pending = (probs if params is not None else None, params, seeded)
            return torch.empty((bs, 0), dtype=torch.int64, device=anchor_token_ids.device)
        hidden = draft_logits_output.hidden_states
        if hidden is None:
            raise RuntimeError("Domino: the draft model returned no hidden states")
        draft_hidden = hidden[: bs * block_size].view(bs, block_size, -1)
        embed_weight, lm_head_weight = self._target_weights(lm_head)
        block = draft_from_hidden(
            draft_hidden, anchor_token_ids.to(torch.int64), embed_weight, lm_head_weight, self.domino_head(),
            shift_label=bool(self.domino_config.shift_label),
            pure_draft_prefix_len=int(self.domino_config.pure_draft_prefix_len),
            sampling=params, draft_temperature_scale=self._draft_temperature_scale, seeded=seeded,
            vocab_shard=self._vocab_shard,
        )
        self._domino_pending = (block.probs, params, seeded)
        return block.tokens

    def _seeded_rows(self, bs: int) -> Optional[SeededRows]:
        """The rows of this step's batch that carry a ``sampling_seed``; their first decided position is the one
        after the bonus (the committed length + 1)."""
        batch = self._domino_batch
        seeds = request_seeds(list(getattr(batch, "reqs", None) or [])[:bs] if batch is not None else [])
        if not any(seed is not None for seed in seeds):
            return None
        if len(seeds) != bs:
            raise RuntimeError(f"Domino: {len(seeds)} requests for a decode batch of {bs} rows")
        return SeededRows.of_batch(seeds, batch.seq_lens[:bs] + 1)

    def _accept_block(self, *, candidates: torch.Tensor, next_token_logits: Optional[torch.Tensor], sampling_info,
                      draft_input, prefix_lens: torch.Tensor, bs: int, target_predict: Optional[torch.Tensor] = None):
        """Chain verification of ``candidates`` = [bonus, d_1 .. d_{B−1}] against the target's B logit rows."""
        probs, params, seeded = self._domino_pending if self._domino_pending is not None else (None, None, None)
        self._domino_pending = None
        block_size = int(self.block_size)
        drafts = candidates[:, 1:]
        if params is None:
            if next_token_logits is not None:
                verdict = verify_greedy(drafts, next_token_logits.view(bs, block_size, -1))
            else:  # the target logits processor handed over its argmax only
                target_top1 = target_predict.view(bs, block_size).to(torch.int64)
                accept_len = accepted_prefix_len(drafts == target_top1[:, :-1])
                verdict = VerifyResult(accept_len, target_top1.gather(1, accept_len[:, None]).squeeze(1))
        else:
            if probs is None or next_token_logits is None:
                raise RuntimeError("Domino: sampling verification needs the draft probabilities and target logits")
            target_logits = next_token_logits.view(bs, block_size, -1).to(torch.float32)
            verdict = verify_sampling(drafts, probs, target_logits, params)
            if seeded is not None:  # rows whose tokens the seed fixes (the rest keep their rejection draws)
                rows = seeded.rows
                fixed = verify_seeded(drafts[rows], target_logits[rows], params.select(rows), seeded.seeds,
                                      seeded.first_position)
                verdict.accept_len[rows] = fixed.accept_len
                verdict.bonus[rows] = fixed.bonus
        accept_len = verdict.accept_len.to(torch.int32)
        bonus = verdict.bonus.to(torch.int64)
        # Under tensor parallelism every rank must commit rank 0's decision: sampled verification draws from each
        # rank's random state. Upstream's broadcast sites (SGLANG_SPEC_TP_SYNC, all by default; no-ops at TP=1).
        site = SpecTpSyncSite.DFLASH_ACCEPT_GREEDY if params is None else SpecTpSyncSite.DFLASH_ACCEPT_SAMPLE
        self._tp_sync.sync(site, accept_len)
        self._tp_sync.sync(site, bonus)
        out_tokens, commit_lens = _commit_accept(candidates, accept_len, bonus)
        self._step_commit_lens = commit_lens  # what the step emits, for a measuring width rule
        if self._draft_log_path:
            self._log_drafts(candidates, accept_len, prefix_lens, params)
        return accept_len, commit_lens, bonus, out_tokens, None

    # ------------------------------------------------------------------ debug
    def _log_drafts(self, candidates: torch.Tensor, accept_len: torch.Tensor, prefix_lens: torch.Tensor,
                    params: Optional[SamplingParams]) -> None:
        """One record per verified row: what the invariant tests need to tie the row to its own request.

        ``req_pool_idx`` is the pool row the step read (``batch.req_pool_indices``), ``req_row`` the one the request
        object owns; ``pos`` the committed length, so ``bonus`` must be the request's output token at
        ``pos - prompt_len`` and the row must carry that request's sampling parameters (``params``: those the verify
        rule was given, None for an all-greedy batch)."""
        batch = self._domino_batch
        reqs = list(getattr(batch, "reqs", []) or []) if batch is not None else []
        pool_rows = batch.req_pool_indices.tolist() if batch is not None else []
        rows = candidates.tolist()
        accepts = accept_len.tolist()
        positions = prefix_lens.tolist()
        used = None
        if params is not None:  # the parameters the verify rule was given, per row
            columns = [params.temperature.tolist(), params.top_p.tolist(), params.top_k.tolist(),
                       params.min_p.tolist() if params.min_p is not None else [0.0] * len(rows)]
            used = [{"temperature": t, "top_p": p, "top_k": k, "min_p": m} for t, p, k, m in zip(*columns)]
        records = []
        for i, row in enumerate(rows):
            req = reqs[i] if i < len(reqs) else None
            sp = getattr(req, "sampling_params", None)
            records.append({
                "rid": getattr(req, "rid", None), "pos": int(positions[i]), "bonus": row[0], "drafts": row[1:],
                "accept": int(accepts[i]),
                "req_pool_idx": int(pool_rows[i]) if i < len(pool_rows) else None,
                "req_row": getattr(getattr(req, "kv", None), "req_pool_idx", None),
                "prompt_len": len(req.origin_input_ids) if req is not None else None,
                "sampling": None if sp is None else {"temperature": sp.temperature, "top_p": sp.top_p,
                                                     "top_k": sp.top_k, "min_p": sp.min_p},
                "verified_with": used[i] if used is not None else None,
            })
        self._append_log(self._draft_log_path, records)

    def _append_log(self, path: str, records: list[dict[str, Any]]) -> None:
        """Append ``records`` as JSON lines to a diagnostic log (the draft log or the step log)."""
        with self._log_lock, open(path, "a") as fh:
            fh.writelines(json.dumps(record) + "\n" for record in records)


class _NoDraftOutput:
    """What upstream reads of a draft forward's result, for a step that drafts nothing."""

    class logits_output:  # noqa: N801 - mirrors the attribute upstream reads
        hidden_states = None

    can_run_graph = False


def _no_draft_forward(forward_batch, *args, **kwargs) -> _NoDraftOutput:
    return _NoDraftOutput()


__all__ = ["DOMINO_PROPOSER", "DominoWorker", "sampling_params_from_batch"]
