"""The per-block Domino correction loop on fused Triton kernels, captured in CUDA graphs.

One block of P proposals is a strictly sequential chain of small kernels: for each corrected slot a
GRU step (with the embedding gather fused in) and a fused correction+argmax (W1 projection, W2
vocabulary tiles, tile reduction). At serving batch sizes each launch is a few microseconds of GPU
work, so launch overhead rivals the work itself; capturing the whole loop once per batch-size bucket
and replaying it removes the per-launch CPU cost.

* :func:`correction_loop_fused` runs the loop structure on the Triton kernels, uncaptured. It works on
  CUDA, and on CPU under the Triton interpreter (that is how the loop is tested on a GPU-less machine).
* :class:`CorrectionLoopGraphRunner` captures that same function per bucket (default 1, 2, 4, 8, 16,
  32) on static input buffers shared by all buckets, pads a batch up to its bucket, replays, and
  slices. Batches larger than the largest bucket, calls made while another graph is being captured,
  and any capture failure fall back to the uncaptured loop (same kernels, same tokens); CPU tensors
  go to the eager PyTorch reference. All CUDA calls sit behind device checks, so this module imports
  and refuses cleanly on a CPU-only machine.

Not verified here: CUDA graph capture and replay, and any GPU timing. The build machine has no GPU;
only the uncaptured loop (under the interpreter) and the CPU refusal paths are tested.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from typing import Optional, Sequence

import torch

from sglang_domino.kernels.reference import DominoHeadWeights, correction_loop_eager
from sglang_domino.kernels.triton_correction import fused_correction_argmax, w2_tile_row_norm_max
from sglang_domino.kernels.triton_gru import gru_cell_tokens

__all__ = ["DEFAULT_BUCKETS", "CorrectionLoopGraphRunner", "correction_loop_fused", "graph_runner_for"]

logger = logging.getLogger(__name__)

# SGLang's benchmark concurrencies; a batch of 3 replays the 4-row graph with one padded row.
DEFAULT_BUCKETS: tuple[int, ...] = (1, 2, 4, 8, 16, 32)


def correction_loop_fused(
    base_logits: torch.Tensor,
    z: torch.Tensor,
    bonus_tokens: torch.Tensor,
    embed_weight: torch.Tensor,
    head: Optional[DominoHeadWeights],
    pure_draft_prefix_len: int,
    *,
    prune: bool = False,
    w2_tile_norms: Optional[torch.Tensor] = None,
    block_v: Optional[int] = None,
    out: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Greedy per-block correction on the Triton kernels; same structure and tokens as the eager loop.

    Args:
        base_logits: [N, P, V] base logits of the P proposal slots.
        z: [N, P, H] backbone hidden states of those slots.
        bonus_tokens: [N] int64, the last verified token.
        embed_weight: [V_emb, H] the target's input embeddings.
        head: Domino head weights, or None (base argmax only).
        pure_draft_prefix_len: slots below it take the base argmax; the GRU still consumes their tokens.
        prune, w2_tile_norms, block_v: passed to :func:`fused_correction_argmax`.
        out: optional [N, P] int64 output (a CUDA graph's static output).

    Returns:
        tokens [N, P] int64. No host synchronisation anywhere, so the whole call is graph-capturable.
    """
    num_rows, num_proposals, _ = base_logits.shape
    tokens: list[torch.Tensor] = []
    h: Optional[torch.Tensor] = None
    for slot in range(num_proposals):
        if head is None or slot < pure_draft_prefix_len:
            tok = torch.argmax(base_logits[:, slot], dim=-1)
        else:
            if h is None:
                # First corrected slot: catch the GRU up on [bonus, d_0 .. d_{slot-1}] from a zero state.
                h = torch.zeros((num_rows, head.gru_hidden_dim), dtype=head.w_hh.dtype, device=base_logits.device)
                feed = [bonus_tokens, *tokens]
            else:
                feed = [tokens[-1]]
            for prev in feed:
                h = gru_cell_tokens(prev, embed_weight, h, head.w_ih, head.w_hh)
            tok, _ = fused_correction_argmax(
                base_logits[:, slot], z[:, slot], h, head.w1, head.w2, prune,
                w2_tile_norms=w2_tile_norms, block_v=block_v,
            )
        tokens.append(tok.to(torch.int64))
    if out is None:
        return torch.stack(tokens, dim=1)
    return torch.stack(tokens, dim=1, out=out)


class CorrectionLoopGraphRunner:
    """CUDA-graph replays of :func:`correction_loop_fused` for one head, one block shape, per bucket.

    Static inputs are allocated once at the largest bucket and shared: the graph of bucket b reads
    rows ``[:b]``. Callers may write straight into :meth:`static_inputs` to skip the input copy (the
    [N, P, V] base-logit copy is the largest one: ~146 MB bf16 at N=32, P=15, V=151936).
    Graphs share one memory pool; they replay on the caller's current stream.

    Unverified here (no GPU): capture, replay, memory use.
    """

    def __init__(
        self,
        head: DominoHeadWeights,
        embed_weight: torch.Tensor,
        pure_draft_prefix_len: int,
        num_proposals: int,
        vocab_size: int,
        hidden_size: int,
        *,
        base_dtype: torch.dtype = torch.bfloat16,
        z_dtype: torch.dtype = torch.bfloat16,
        buckets: Sequence[int] = DEFAULT_BUCKETS,
        prune: bool = False,
        block_v: Optional[int] = None,
    ) -> None:
        if not buckets or any(int(b) < 1 for b in buckets):
            raise ValueError(f"buckets must be positive batch sizes, got {buckets}")
        self.head = head
        self.embed_weight = embed_weight
        self.pure_draft_prefix_len = int(pure_draft_prefix_len)
        self.num_proposals = int(num_proposals)
        self.vocab_size = int(vocab_size)
        self.hidden_size = int(hidden_size)
        self.base_dtype = base_dtype
        self.z_dtype = z_dtype
        self.buckets = tuple(sorted({int(b) for b in buckets}))
        self.prune = bool(prune)
        self.block_v = block_v
        self.device = head.w2.device
        self._graphs: dict[int, "torch.cuda.CUDAGraph"] = {}
        self._pool = None
        self._static: Optional[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]] = None
        self._tile_norms: Optional[torch.Tensor] = None
        self.disabled_reason: Optional[str] = None

    # ---- capability -------------------------------------------------------------------------------

    @property
    def graphs_supported(self) -> bool:
        """True only for CUDA weights on a machine with a CUDA runtime."""
        return self.device.type == "cuda" and torch.cuda.is_available()

    def bucket_for(self, num_rows: int) -> Optional[int]:
        """Smallest bucket holding ``num_rows``, or None when it exceeds the largest."""
        for b in self.buckets:
            if b >= num_rows:
                return b
        return None

    def _require_cuda(self) -> None:
        if not self.graphs_supported:
            raise RuntimeError(
                f"CUDA graphs need CUDA weights and a CUDA runtime (weights on {self.device}, "
                f"torch.cuda.is_available()={torch.cuda.is_available()})"
            )

    # ---- static buffers and capture ---------------------------------------------------------------

    def static_inputs(self, num_rows: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Views ``(base_logits [n, P, V], z [n, P, H], bonus [n])`` of the static input buffers."""
        self._require_cuda()
        if num_rows > self.buckets[-1]:
            raise ValueError(f"{num_rows} rows exceed the largest bucket {self.buckets[-1]}")
        base, z, bonus, _ = self._ensure_static()
        return base[:num_rows], z[:num_rows], bonus[:num_rows]

    def _ensure_static(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        if self._static is None:
            bmax = self.buckets[-1]
            p, v, hdim = self.num_proposals, self.vocab_size, self.hidden_size
            # Zero-filled: padded rows must hold valid token ids and finite values (their outputs are
            # discarded; rows never interact, except that pruning may then keep a few more tiles).
            self._static = (
                torch.zeros((bmax, p, v), dtype=self.base_dtype, device=self.device),
                torch.zeros((bmax, p, hdim), dtype=self.z_dtype, device=self.device),
                torch.zeros((bmax,), dtype=torch.int64, device=self.device),
                torch.zeros((bmax, p), dtype=torch.int64, device=self.device),
            )
            if self.prune:
                # Reads all of W2: done once here, never inside a captured graph.
                self._tile_norms = w2_tile_row_norm_max(self.head.w2, self.block_v)
        return self._static

    def _loop(self, base: torch.Tensor, z: torch.Tensor, bonus: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        return correction_loop_fused(
            base, z, bonus, self.embed_weight, self.head, self.pure_draft_prefix_len,
            prune=self.prune, w2_tile_norms=self._tile_norms, block_v=self.block_v, out=out,
        )

    def capture(self, buckets: Optional[Sequence[int]] = None) -> None:
        """Capture the given buckets (default all), largest first so the shared pool is sized once.

        Raises RuntimeError off CUDA.
        """
        self._require_cuda()
        todo = sorted({int(b) for b in (buckets or self.buckets)}, reverse=True)
        for b in todo:
            if b not in self.buckets:
                raise ValueError(f"{b} is not one of the buckets {self.buckets}")
            if b not in self._graphs:
                self._capture_one(b)

    def _capture_one(self, bucket: int) -> None:
        base, z, bonus, out = self._ensure_static()
        views = (base[:bucket], z[:bucket], bonus[:bucket], out[:bucket])
        current = torch.cuda.current_stream(self.device)
        # Warm-up off the capture: Triton JIT-compiles each kernel specialisation on first launch, which
        # must not happen inside a capture; it also lets the caching allocator settle.
        side = torch.cuda.Stream(device=self.device)
        side.wait_stream(current)
        with torch.cuda.stream(side):
            for _ in range(2):
                self._loop(*views)
        current.wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self._pool):
            self._loop(*views)
        if self._pool is None:
            self._pool = graph.pool()
        self._graphs[bucket] = graph

    # ---- run --------------------------------------------------------------------------------------

    def _fits(self, base_logits: torch.Tensor, z: torch.Tensor, bonus_tokens: torch.Tensor) -> bool:
        return (
            base_logits.ndim == 3
            and tuple(base_logits.shape[1:]) == (self.num_proposals, self.vocab_size)
            and tuple(z.shape) == (base_logits.shape[0], self.num_proposals, self.hidden_size)
            and tuple(bonus_tokens.shape) == (base_logits.shape[0],)
            and base_logits.device == self.device
        )

    def run(self, base_logits: torch.Tensor, z: torch.Tensor, bonus_tokens: torch.Tensor) -> torch.Tensor:
        """Greedy tokens [N, P] int64 for one block; graph replay when possible, never a crash for size.

        CPU tensors: the eager PyTorch reference (no graphs, no Triton). CUDA tensors that do not fit
        a bucket (too many rows, other shape), calls during someone else's capture, and runners whose
        capture failed: the uncaptured Triton loop.
        """
        if not base_logits.is_cuda or not self.graphs_supported:
            return correction_loop_eager(
                base_logits, z, bonus_tokens, self.embed_weight, self.head, self.pure_draft_prefix_len
            )[0]
        num_rows = int(base_logits.shape[0])
        bucket = self.bucket_for(num_rows)
        if (
            bucket is None
            or self.disabled_reason is not None
            or not self._fits(base_logits, z, bonus_tokens)
            or torch.cuda.is_current_stream_capturing()
        ):
            # Inside an outer capture the kernels are simply recorded into the caller's graph.
            self._ensure_static()
            return correction_loop_fused(
                base_logits, z, bonus_tokens, self.embed_weight, self.head, self.pure_draft_prefix_len,
                prune=self.prune, w2_tile_norms=self._tile_norms, block_v=self.block_v,
            )
        if bucket not in self._graphs:
            try:
                self._capture_one(bucket)
            except Exception as exc:  # noqa: BLE001 - any capture failure degrades to the uncaptured loop
                self.disabled_reason = f"CUDA graph capture failed for bucket {bucket}: {exc!r}"
                logger.warning("%s; running the Domino correction loop without graphs", self.disabled_reason)
                return correction_loop_fused(
                    base_logits, z, bonus_tokens, self.embed_weight, self.head, self.pure_draft_prefix_len,
                    prune=self.prune, w2_tile_norms=self._tile_norms, block_v=self.block_v,
                )
        base, zs, bonus, out = self._ensure_static()
        # Copy only when the caller did not already write into the static buffers.
        if base_logits.data_ptr() != base.data_ptr():
            base[:num_rows].copy_(base_logits)
        if z.data_ptr() != zs.data_ptr():
            zs[:num_rows].copy_(z)
        if bonus_tokens.data_ptr() != bonus.data_ptr():
            bonus[:num_rows].copy_(bonus_tokens)
        self._graphs[bucket].replay()
        return out[:num_rows].clone()


_RUNNERS: "OrderedDict[tuple, CorrectionLoopGraphRunner]" = OrderedDict()
_RUNNERS_MAX = 4


def graph_runner_for(
    head: DominoHeadWeights,
    embed_weight: torch.Tensor,
    pure_draft_prefix_len: int,
    base_logits: torch.Tensor,
    z: torch.Tensor,
    *,
    buckets: Sequence[int] = DEFAULT_BUCKETS,
    prune: bool = False,
) -> CorrectionLoopGraphRunner:
    """The cached runner for this head, embedding table, block shape and dtypes (created on first use).

    Keyed by weight storage, so a reloaded checkpoint gets a fresh runner; a few are kept (LRU).
    """
    key = (
        head.w_ih.data_ptr(), head.w_hh.data_ptr(), head.w1.data_ptr(), head.w2.data_ptr(), embed_weight.data_ptr(),
        tuple(head.w2.shape), tuple(embed_weight.shape), str(head.w2.device),
        int(pure_draft_prefix_len), tuple(base_logits.shape[1:]), int(z.shape[-1]),
        base_logits.dtype, z.dtype, tuple(buckets), bool(prune),
    )
    runner = _RUNNERS.get(key)
    if runner is None:
        runner = CorrectionLoopGraphRunner(
            head, embed_weight, pure_draft_prefix_len,
            num_proposals=int(base_logits.shape[1]), vocab_size=int(base_logits.shape[2]),
            hidden_size=int(z.shape[-1]), base_dtype=base_logits.dtype, z_dtype=z.dtype,
            buckets=buckets, prune=prune,
        )
        _RUNNERS[key] = runner
        while len(_RUNNERS) > _RUNNERS_MAX:
            _RUNNERS.popitem(last=False)
    else:
        _RUNNERS.move_to_end(key)
    return runner
