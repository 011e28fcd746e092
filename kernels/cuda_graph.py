"""The per-block Domino correction loop on fused Triton kernels, captured in CUDA graphs.

One block of P proposals is a strictly sequential chain of small kernels: for each corrected slot a
GRU step (with the embedding gather fused in) and a fused correction+argmax (W1 projection, W2
vocabulary tiles, tile reduction). At serving batch sizes each launch is a few microseconds of GPU
work, so launch overhead rivals the work itself; capturing the whole loop once per batch-size bucket
and replaying it removes the per-launch CPU cost.

* :func:`correction_loop_fused` runs the loop structure on the Triton kernels, uncaptured. It works on
  CUDA, and on CPU under the Triton interpreter (that is how the loop is tested on a GPU-less machine).
* :class:`CorrectionLoopGraphRunner` captures a loop function (default :func:`correction_loop_fused`)
  per bucket on static input buffers shared by all buckets, pads a batch up to its bucket, replays, and
  slices. Buckets come from SGLang's decode CUDA-graph batch sizes (:func:`sglang_decode_batch_sizes`;
  :data:`DEFAULT_BUCKETS` when the server args name none). :meth:`~CorrectionLoopGraphRunner.capture_all`
  captures every bucket at server start, largest first; a bucket whose capture fails runs uncaptured
  alone. Batches larger than the largest bucket, calls made while another graph is being captured, and
  failed buckets run the uncaptured loop (same kernels, same tokens); CPU tensors go to the eager
  PyTorch reference.
* What captures and replays is a :class:`GraphBackend`: :class:`CudaGraphBackend` (``torch.cuda.graph``
  on a side-stream warm-up, one shared memory pool) in serving. All CUDA calls sit in that backend,
  behind device checks, so this module imports and refuses cleanly on a CPU-only machine.
* :func:`prepare_graph_runner` builds a runner, captures it at start and registers it, so that
  :func:`sglang_domino.kernels.correction_loop` (through :func:`graph_runner_for`) replays its graphs.

Verified on CPU (tests/kernels/test_cuda_graph.py): the runner's buckets, padding, static buffers,
input-copy skipping, per-bucket capture fallback and uncaptured fallback, with a stand-in backend that
records the captured callable and replays it on the static buffers, and the eager reference loop as the
captured loop; SGLang's bucket list from server args. Not verified here (no GPU): :class:`CudaGraphBackend`
itself (capture, replay, memory use, capture time) and any GPU timing.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Protocol, Sequence

import torch

from sglang_domino.kernels.reference import DominoHeadWeights, correction_loop_eager
from sglang_domino.kernels.triton_correction import fused_correction_argmax, w2_tile_row_norm_max
from sglang_domino.kernels.triton_gru import gru_cell_tokens

__all__ = [
    "DEFAULT_BUCKETS",
    "CaptureReport",
    "CorrectionLoopGraphRunner",
    "CudaGraphBackend",
    "GraphBackend",
    "correction_loop_fused",
    "graph_runner_for",
    "prepare_graph_runner",
    "sglang_decode_batch_sizes",
]

logger = logging.getLogger(__name__)

# Fallback buckets (server args naming no decode graph sizes); a batch of 3 replays the 4-row graph with one
# padded row.
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


# The loop a runner captures: correction_loop_fused's signature (keywords prune, w2_tile_norms, block_v, out;
# with ``out`` it writes the tokens there and returns it).
CorrectionLoopFn = Callable[..., torch.Tensor]


# ---- the capture/replay seam ----------------------------------------------------------------------------


class GraphHandle(Protocol):
    """A captured graph: :meth:`replay` reruns the captured work on the buffers it was captured on."""

    def replay(self) -> None: ...


class GraphBackend(Protocol):
    """What captures and replays graphs for a :class:`CorrectionLoopGraphRunner`."""

    def unsupported_reason(self, device: torch.device) -> Optional[str]:
        """None when graphs can be captured for weights on ``device``; else why not."""

    def capture(self, fn: Callable[[], object], *, batch_size: int) -> GraphHandle:
        """Capture ``fn()`` (it reads and writes only the runner's static buffers) as the ``batch_size`` graph."""

    def is_capturing(self) -> bool:
        """True while the caller's stream is being captured (by anyone): a run then must not replay."""

    def memory_in_use(self) -> Optional[int]:
        """Bytes of device memory in use (capture_all reports the change), or None where not measured."""


class CudaGraphBackend:
    """``torch.cuda.CUDAGraph`` capture on ``device``: two warm-up runs on a side stream (Triton JIT-compiles
    each kernel specialisation on first launch, which must not happen inside a capture; the caching allocator
    settles), then the capture, into one memory pool shared by every graph of this backend. Graphs replay on
    the caller's current stream."""

    def __init__(self, device: torch.device | str) -> None:
        self.device = torch.device(device)
        self._pool = None

    def unsupported_reason(self, device: torch.device) -> Optional[str]:
        if device.type == "cuda" and torch.cuda.is_available():
            return None
        return (f"CUDA graphs need CUDA weights and a CUDA runtime (weights on {device}, "
                f"torch.cuda.is_available()={torch.cuda.is_available()})")

    def capture(self, fn: Callable[[], object], *, batch_size: int) -> GraphHandle:
        current = torch.cuda.current_stream(self.device)
        side = torch.cuda.Stream(device=self.device)
        side.wait_stream(current)
        with torch.cuda.stream(side):
            for _ in range(2):
                fn()
        current.wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self._pool):
            fn()
        if self._pool is None:
            self._pool = graph.pool()
        return graph

    def is_capturing(self) -> bool:
        return torch.cuda.is_available() and torch.cuda.is_current_stream_capturing()

    def memory_in_use(self) -> Optional[int]:
        return int(torch.cuda.memory_allocated(self.device))


@dataclass
class CaptureReport:
    """What :meth:`CorrectionLoopGraphRunner.capture_all` did.

    captured: buckets with a graph, largest first; failed: bucket -> why its capture failed (it runs
    uncaptured); seconds: wall time of the captures; static_bytes: the shared static buffers;
    graph_bytes: device memory the captures added (None where the backend does not measure it).
    """

    captured: list[int] = field(default_factory=list)
    failed: dict[int, str] = field(default_factory=dict)
    seconds: float = 0.0
    static_bytes: int = 0
    graph_bytes: Optional[int] = None


# ---- the runner ---------------------------------------------------------------------------------------------


class CorrectionLoopGraphRunner:
    """Graph replays of a correction loop (default :func:`correction_loop_fused`) for one head, one block
    shape, per bucket.

    Static inputs are allocated once at the largest bucket and shared: the graph of bucket b reads
    rows ``[:b]``. Callers may write straight into :meth:`static_inputs` to skip the input copy (the
    [N, P, V] base-logit copy is the largest one: ~146 MB bf16 at N=32, P=15, V=151936).

    Capture modes: after :meth:`capture_all` (serving: every bucket at start) :meth:`run` never captures.
    Before it, ``lazy_capture=True`` captures a bucket on its first batch of that size: the mode kept for
    :func:`graph_runner_for` outside a server (scripts calling :func:`sglang_domino.kernels.correction_loop`
    on CUDA, which know no bucket list and have no start); ``lazy_capture=False`` runs uncaptured until
    :meth:`capture_all`. Either way a bucket whose capture failed runs uncaptured, alone.

    Args beyond the block shape:
        buckets: batch sizes to capture (may be empty: nothing is captured).
        backend: captures and replays (default :class:`CudaGraphBackend` on the weights' device).
        loop: the captured loop (default :func:`correction_loop_fused`), also the uncaptured fallback.
        lazy_capture: see the capture modes.
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
        backend: Optional[GraphBackend] = None,
        loop: CorrectionLoopFn = correction_loop_fused,
        lazy_capture: bool = True,
    ) -> None:
        if any(int(b) < 1 for b in buckets):
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
        self.backend: GraphBackend = backend if backend is not None else CudaGraphBackend(self.device)
        self.loop = loop
        self._graphs: dict[int, GraphHandle] = {}
        # bucket -> why its capture failed; that bucket runs uncaptured, the others keep their graphs.
        self.failed: dict[int, str] = {}
        self.lazy_capture = bool(lazy_capture)
        self._static: Optional[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]] = None
        self._tile_norms: Optional[torch.Tensor] = None
        self._tile_norms_ready = False

    # ---- capability -------------------------------------------------------------------------------

    @property
    def graphs_supported(self) -> bool:
        """True when the backend can capture for the weights' device (CUDA backend: CUDA weights + runtime)."""
        return self.backend.unsupported_reason(self.device) is None

    @property
    def captured_buckets(self) -> tuple[int, ...]:
        return tuple(sorted(self._graphs))

    def bucket_for(self, num_rows: int) -> Optional[int]:
        """Smallest bucket holding ``num_rows``, or None when it exceeds the largest."""
        for b in self.buckets:
            if b >= num_rows:
                return b
        return None

    def _require_graphs(self) -> None:
        reason = self.backend.unsupported_reason(self.device)
        if reason is not None:
            raise RuntimeError(reason)

    # ---- static buffers and capture ---------------------------------------------------------------

    def static_inputs(self, num_rows: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Views ``(base_logits [n, P, V], z [n, P, H], bonus [n])`` of the static input buffers."""
        self._require_graphs()
        if not self.buckets or num_rows > self.buckets[-1]:
            raise ValueError(f"{num_rows} rows exceed the largest bucket ({self.buckets})")
        base, z, bonus, _ = self._ensure_static()
        return base[:num_rows], z[:num_rows], bonus[:num_rows]

    def _ensure_static(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        if self._static is None:
            bmax = self.buckets[-1]
            p, v, hdim = self.num_proposals, self.vocab_size, self.hidden_size
            # Zero-filled: padded rows must hold valid token ids and finite values (their outputs are
            # discarded; rows never interact, except that pruning may then keep a few more tiles). Later they
            # hold an earlier batch's rows, which are valid too.
            self._static = (
                torch.zeros((bmax, p, v), dtype=self.base_dtype, device=self.device),
                torch.zeros((bmax, p, hdim), dtype=self.z_dtype, device=self.device),
                torch.zeros((bmax,), dtype=torch.int64, device=self.device),
                torch.zeros((bmax, p), dtype=torch.int64, device=self.device),
            )
        self._ensure_tile_norms()
        return self._static

    def _ensure_tile_norms(self) -> None:
        if self.prune and not self._tile_norms_ready:
            # Reads all of W2: done once here, never inside a captured graph.
            self._tile_norms = w2_tile_row_norm_max(self.head.w2, self.block_v)
        self._tile_norms_ready = True

    def _run_loop(self, base: torch.Tensor, z: torch.Tensor, bonus: torch.Tensor,
                  out: Optional[torch.Tensor] = None) -> torch.Tensor:
        return self.loop(
            base, z, bonus, self.embed_weight, self.head, self.pure_draft_prefix_len,
            prune=self.prune, w2_tile_norms=self._tile_norms, block_v=self.block_v, out=out,
        )

    def capture(self, buckets: Optional[Sequence[int]] = None) -> None:
        """Capture the given buckets (default all), largest first so the shared pool is sized once.

        Raises RuntimeError where the backend cannot capture (off CUDA for the CUDA backend), and the
        capture's own error (the bucket is not recorded as failed). Servers use :meth:`capture_all`.
        """
        self._require_graphs()
        todo = sorted({int(b) for b in (buckets or self.buckets)}, reverse=True)
        for b in todo:
            if b not in self.buckets:
                raise ValueError(f"{b} is not one of the buckets {self.buckets}")
            if b not in self._graphs:
                self._capture_one(b)

    def capture_all(self) -> CaptureReport:
        """Capture every bucket now (server start), largest first; from then on :meth:`run` never captures.

        A bucket whose capture raises is logged once with the reason and runs uncaptured; the other buckets
        keep their graphs. Raises RuntimeError only where the backend cannot capture at all.
        """
        self._require_graphs()
        self.lazy_capture = False
        report = CaptureReport()
        if not self.buckets:
            logger.info("Domino correction loop: no CUDA-graph buckets; every batch runs uncaptured")
            return report
        static = self._ensure_static()
        report.static_bytes = sum(t.numel() * t.element_size() for t in static)
        before = self.backend.memory_in_use()
        start = time.perf_counter()
        for b in sorted(self.buckets, reverse=True):
            if b in self._graphs:
                report.captured.append(b)
            elif self._try_capture(b):
                report.captured.append(b)
        report.seconds = time.perf_counter() - start
        after = self.backend.memory_in_use()
        report.graph_bytes = None if before is None or after is None else after - before
        report.failed = dict(self.failed)
        logger.info(
            "Domino correction loop: captured %d/%d CUDA-graph buckets (largest %s) in %.2f s; static buffers "
            "%.1f MiB, graphs %s%s",
            len(report.captured), len(self.buckets), report.captured[0] if report.captured else None,
            report.seconds, report.static_bytes / 2**20,
            "n/a" if report.graph_bytes is None else f"{report.graph_bytes / 2**20:.1f} MiB",
            f"; uncaptured buckets {sorted(report.failed)}" if report.failed else "",
        )
        return report

    def _try_capture(self, bucket: int) -> bool:
        """Capture one bucket; on failure record and log the reason once, and answer False."""
        try:
            self._capture_one(bucket)
        except Exception as exc:  # noqa: BLE001 - a failed capture degrades that bucket to the uncaptured loop
            self.failed[bucket] = f"{type(exc).__name__}: {exc}"
            logger.warning("Domino correction loop: CUDA graph capture failed for bucket %d (%s); batches of "
                           "that bucket run uncaptured, the other buckets keep their graphs",
                           bucket, self.failed[bucket])
            return False
        return True

    def _capture_one(self, bucket: int) -> None:
        base, z, bonus, out = self._ensure_static()
        views = (base[:bucket], z[:bucket], bonus[:bucket], out[:bucket])
        self._graphs[bucket] = self.backend.capture(lambda: self._run_loop(*views), batch_size=bucket)

    # ---- run --------------------------------------------------------------------------------------

    def _fits(self, base_logits: torch.Tensor, z: torch.Tensor, bonus_tokens: torch.Tensor) -> bool:
        return (
            base_logits.ndim == 3
            and tuple(base_logits.shape[1:]) == (self.num_proposals, self.vocab_size)
            and tuple(z.shape) == (base_logits.shape[0], self.num_proposals, self.hidden_size)
            and tuple(bonus_tokens.shape) == (base_logits.shape[0],)
            and base_logits.device == self.device
            # Copied into the static buffers: another dtype would be rounded into them silently.
            and base_logits.dtype == self.base_dtype
            and z.dtype == self.z_dtype
        )

    def run(self, base_logits: torch.Tensor, z: torch.Tensor, bonus_tokens: torch.Tensor) -> torch.Tensor:
        """Greedy tokens [N, P] int64 for one block; graph replay when possible, never a crash for size.

        Tensors on another device type than the weights (CPU tensors for the CUDA backend), or a backend
        that cannot capture here: the eager PyTorch reference (no graphs, no Triton). Tensors that do not
        fit a bucket (too many rows, other shape), calls during someone else's capture, buckets whose
        capture failed, and uncaptured buckets when not capturing lazily: the uncaptured loop.
        """
        if base_logits.device.type != self.device.type or not self.graphs_supported:
            return correction_loop_eager(
                base_logits, z, bonus_tokens, self.embed_weight, self.head, self.pure_draft_prefix_len
            )[0]
        num_rows = int(base_logits.shape[0])
        bucket = self.bucket_for(num_rows)
        if (
            bucket is None
            or bucket in self.failed
            or not self._fits(base_logits, z, bonus_tokens)
            or self.backend.is_capturing()
        ):
            # Inside an outer capture the kernels are simply recorded into the caller's graph.
            return self._uncaptured(base_logits, z, bonus_tokens)
        if bucket not in self._graphs:
            if not self.lazy_capture or not self._try_capture(bucket):
                return self._uncaptured(base_logits, z, bonus_tokens)
        base, zs, bonus, out = self._ensure_static()
        # Copy only when the caller did not already write into the static buffers (same start, same layout).
        for src, dst in ((base_logits, base), (z, zs), (bonus_tokens, bonus)):
            if not (src.data_ptr() == dst.data_ptr() and src.stride() == dst.stride()):
                dst[:num_rows].copy_(src)
        self._graphs[bucket].replay()
        return out[:num_rows].clone()

    def _uncaptured(self, base_logits: torch.Tensor, z: torch.Tensor, bonus_tokens: torch.Tensor) -> torch.Tensor:
        self._ensure_tile_norms()
        return self._run_loop(base_logits, z, bonus_tokens)


# ---- SGLang's buckets -----------------------------------------------------------------------------------------


def sglang_decode_batch_sizes(server_args: Any) -> tuple[int, ...]:
    """The batch sizes SGLang captures its decode CUDA graphs for, from its server args: the buckets to capture.

    * Resolved server args (a running server's): ``cuda_graph_config.decode.bs``, the list SGLang materialises
      from ``--cuda-graph-bs-decode`` or ``--cuda-graph-max-bs-decode`` (or its per-GPU default max_bs) in
      sglang/srt/arg_groups/memory_hook.py:201-207 (sglang 0.5.23), before its model runner drops sizes above
      the request pool (model_executor/runner/base_cuda_graph_runner.py:65-102, which needs a model runner).
    * Unresolved args (a namespace, or ServerArgs before post-init): ``cuda_graph_bs_decode`` if given, else
      upstream's own ``generate_decode_cuda_graph_batch_sizes(server_args, cuda_graph_max_bs_decode)``
      (sglang/srt/arg_groups/cuda_graph_hook.py:500; 1..8, then steps of 2 up to 32, 4 up to 64, ... when a
      speculative algorithm is set, plus max_bs itself); neither given: :data:`DEFAULT_BUCKETS`. An explicit
      ``cuda_graph_config`` JSON is only read once resolved.
    * Decode CUDA graphs disabled (``--disable-decode-cuda-graph``, ``--cuda-graph-backend-decode disabled``):
      ``()``, every batch runs uncaptured.
    """
    from sglang.srt.arg_groups.model_override_base import resolving_view

    cfg = resolving_view(server_args)
    decode = getattr(getattr(cfg, "cuda_graph_config", None), "decode", None)
    if decode is not None and getattr(server_args, "_cuda_graph_config_locked", None) is not None:  # resolved
        if decode.backend == "disabled":
            return ()
        if decode.bs:
            return tuple(sorted({int(b) for b in decode.bs}))
        max_bs = decode.max_bs
    else:
        if (getattr(cfg, "disable_cuda_graph", False) or getattr(cfg, "disable_decode_cuda_graph", False)
                or getattr(cfg, "cuda_graph_backend_decode", None) == "disabled"):
            return ()
        explicit = getattr(cfg, "cuda_graph_bs_decode", None)
        if explicit:
            return tuple(sorted({int(b) for b in explicit}))
        max_bs = getattr(cfg, "cuda_graph_max_bs_decode", None)
    if max_bs is None:
        return DEFAULT_BUCKETS
    from sglang.srt.arg_groups.cuda_graph_hook import generate_decode_cuda_graph_batch_sizes

    return tuple(sorted({int(b) for b in generate_decode_cuda_graph_batch_sizes(server_args, int(max_bs))}))


# ---- the runners kernels.correction_loop uses -------------------------------------------------------------------


_RUNNERS: "OrderedDict[tuple, CorrectionLoopGraphRunner]" = OrderedDict()
_RUNNERS_MAX = 4
# Set by prepare_graph_runner: a server captured at start, so runners made on first use never capture (a lookup
# miss there means the worker prepared another shape; it runs uncaptured, logged once).
_CAPTURE_AT_START_ONLY = False
_MISSES_LOGGED: set = set()


def _runner_key(head: DominoHeadWeights, embed_weight: torch.Tensor, pure_draft_prefix_len: int, num_proposals: int,
                vocab_size: int, hidden_size: int, base_dtype: torch.dtype, z_dtype: torch.dtype,
                prune: bool) -> tuple:
    return (
        head.w_ih.data_ptr(), head.w_hh.data_ptr(), head.w1.data_ptr(), head.w2.data_ptr(), embed_weight.data_ptr(),
        tuple(head.w2.shape), tuple(embed_weight.shape), str(head.w2.device),
        int(pure_draft_prefix_len), int(num_proposals), int(vocab_size), int(hidden_size),
        base_dtype, z_dtype, bool(prune),
    )


def _remember(key: tuple, runner: CorrectionLoopGraphRunner) -> None:
    _RUNNERS[key] = runner
    _RUNNERS.move_to_end(key)
    while len(_RUNNERS) > _RUNNERS_MAX:
        _RUNNERS.popitem(last=False)


def prepare_graph_runner(
    head: DominoHeadWeights,
    embed_weight: torch.Tensor,
    pure_draft_prefix_len: int,
    num_proposals: int,
    vocab_size: int,
    hidden_size: int,
    *,
    base_dtype: torch.dtype,
    z_dtype: torch.dtype,
    buckets: Sequence[int] = DEFAULT_BUCKETS,
    prune: bool = False,
    backend: Optional[GraphBackend] = None,
) -> tuple[CorrectionLoopGraphRunner, CaptureReport]:
    """Server start: build the runner for this head and block shape, capture every bucket, and register it for
    :func:`graph_runner_for` (so :func:`sglang_domino.kernels.correction_loop` replays its graphs). From then on
    no runner of this process captures lazily. Raises RuntimeError off CUDA (default backend)."""
    global _CAPTURE_AT_START_ONLY
    runner = CorrectionLoopGraphRunner(
        head, embed_weight, pure_draft_prefix_len, num_proposals, vocab_size, hidden_size,
        base_dtype=base_dtype, z_dtype=z_dtype, buckets=buckets, prune=prune, backend=backend,
    )
    report = runner.capture_all()
    _CAPTURE_AT_START_ONLY = True
    _remember(_runner_key(head, embed_weight, pure_draft_prefix_len, num_proposals, vocab_size, hidden_size,
                          base_dtype, z_dtype, prune), runner)
    return runner, report


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
    """The runner for this head, embedding table, block shape and dtypes: the one :func:`prepare_graph_runner`
    registered, else a cached one made on first use with ``buckets`` (capturing lazily, unless a runner was
    prepared at start in this process: then it runs uncaptured).

    Keyed by weight storage, so a reloaded checkpoint gets a fresh runner; a few are kept (LRU).
    """
    key = _runner_key(head, embed_weight, pure_draft_prefix_len, int(base_logits.shape[1]),
                      int(base_logits.shape[2]), int(z.shape[-1]), base_logits.dtype, z.dtype, prune)
    runner = _RUNNERS.get(key)
    if runner is None:
        runner = CorrectionLoopGraphRunner(
            head, embed_weight, pure_draft_prefix_len,
            num_proposals=int(base_logits.shape[1]), vocab_size=int(base_logits.shape[2]),
            hidden_size=int(z.shape[-1]), base_dtype=base_logits.dtype, z_dtype=z.dtype,
            buckets=buckets, prune=prune, lazy_capture=not _CAPTURE_AT_START_ONLY,
        )
        if _CAPTURE_AT_START_ONLY:
            if key[5:] not in _MISSES_LOGGED:
                _MISSES_LOGGED.add(key[5:])
                logger.warning("Domino correction loop: no CUDA-graph runner was prepared at start for block shape "
                               "P=%d V=%d H=%d (%s/%s); running it uncaptured", base_logits.shape[1],
                               base_logits.shape[2], z.shape[-1], base_logits.dtype, z.dtype)
    _remember(key, runner)
    return runner
