"""The correction-loop graph runner (kernels/cuda_graph.py) on CPU, through a stand-in graph backend.

The stand-in records the callable the runner captures and replays it, i.e. reruns it on the static buffers it
closed over, as a CUDA graph reruns its kernels on the addresses it captured. The captured loop is the eager
reference behind an ``out=`` wrapper that also checks every row it is given (padding included) is a valid
input. So the runner's buckets, padding, static buffers, input copies and fallbacks are checked here without a
GPU or Triton; CUDA capture itself (CudaGraphBackend) waits for a GPU.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from types import SimpleNamespace
from typing import Callable, Optional

import pytest
import torch
from kernel_env import triton_ready  # noqa: F401  (first: picks the interpreter before triton loads)
from torch.overrides import TorchFunctionMode

from sglang_domino.kernels import cuda_graph
from sglang_domino.kernels.cuda_graph import (
    DEFAULT_BUCKETS,
    CorrectionLoopGraphRunner,
    graph_runner_for,
    prepare_graph_runner,
    sglang_decode_batch_sizes,
)
from sglang_domino.kernels.reference import DominoHeadWeights, correction_loop_eager

P, V, HDIM, G, R = 5, 300, 32, 16, 8
PDL = 1
BUCKETS = (1, 2, 4, 8, 16, 32)


def _weights(seed: int = 0) -> tuple[DominoHeadWeights, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    head = DominoHeadWeights(
        w_ih=torch.randn(3 * G, HDIM, generator=gen) * 0.3,
        w_hh=torch.randn(3 * G, G, generator=gen) * 0.3,
        w1=torch.randn(R, HDIM + G, generator=gen) * 0.3,
        w2=torch.randn(V, R, generator=gen),
    )
    return head, torch.randn(V, HDIM, generator=gen)


HEAD, EMBED = _weights()


def _batch(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1000 + seed)
    return (torch.randn(n, P, V, generator=gen), torch.randn(n, P, HDIM, generator=gen),
            torch.randint(0, V, (n,), generator=gen))


def _expected(base: torch.Tensor, z: torch.Tensor, bonus: torch.Tensor) -> torch.Tensor:
    return correction_loop_eager(base, z, bonus, EMBED, HEAD, PDL)[0]


def checked_eager_loop(base, z, bonus, embed_weight, head, pure_draft_prefix_len, *, prune, w2_tile_norms,
                       block_v, out=None):
    """correction_loop_fused's signature on the eager reference; refuses rows (padding too) a real batch cannot
    hold: non-finite logits or hidden states, token ids outside the vocabulary."""
    assert torch.isfinite(base).all() and torch.isfinite(z).all(), "non-finite rows reached the loop"
    assert bool(((bonus >= 0) & (bonus < V)).all()), f"bonus ids outside [0, {V}): {bonus.tolist()}"
    tokens, _ = correction_loop_eager(base, z, bonus, embed_weight, head, pure_draft_prefix_len)
    if out is None:
        return tokens
    out.copy_(tokens)
    return out


class _Recorded:
    def __init__(self, fn: Callable[[], object], batch_size: int, replays: list[int]) -> None:
        self.fn, self.batch_size, self.replays = fn, batch_size, replays

    def replay(self) -> None:
        self.replays.append(self.batch_size)
        self.fn()


class RecordingBackend:
    """Stand-in for CudaGraphBackend: capture records the callable (raising for ``fail_for`` sizes), replay
    calls it again; no memory measurement."""

    def __init__(self, fail_for: tuple[int, ...] = ()) -> None:
        self.fail_for = set(fail_for)
        self.capture_calls: list[int] = []
        self.replays: list[int] = []

    def unsupported_reason(self, device: torch.device) -> Optional[str]:
        return None

    def capture(self, fn: Callable[[], object], *, batch_size: int) -> _Recorded:
        self.capture_calls.append(batch_size)
        if batch_size in self.fail_for:
            raise RuntimeError(f"stand-in capture failure for bucket {batch_size}")
        return _Recorded(fn, batch_size, self.replays)

    def is_capturing(self) -> bool:
        return False

    def memory_in_use(self) -> Optional[int]:
        return None


def _runner(backend: RecordingBackend, buckets=BUCKETS, **kw) -> CorrectionLoopGraphRunner:
    return CorrectionLoopGraphRunner(HEAD, EMBED, PDL, num_proposals=P, vocab_size=V, hidden_size=HDIM,
                                     base_dtype=torch.float32, z_dtype=torch.float32, buckets=buckets,
                                     backend=backend, loop=checked_eager_loop, **kw)


class _StaticCopies(TorchFunctionMode):
    """Counts Tensor.copy_ calls whose destination lies in one of the given buffers."""

    def __init__(self, buffers: tuple[torch.Tensor, ...]) -> None:
        super().__init__()
        self.ptrs = {t.untyped_storage().data_ptr() for t in buffers}
        self.count = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func is torch.Tensor.copy_ and args[0].untyped_storage().data_ptr() in self.ptrs:
            self.count += 1
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 31, 32, 33])
def test_replay_matches_uncaptured_loop_across_bucket_edges(n: int) -> None:
    backend = RecordingBackend()
    runner = _runner(backend)
    report = runner.capture_all()
    assert report.captured == sorted(BUCKETS, reverse=True) and not report.failed
    assert backend.capture_calls == [32, 16, 8, 4, 2, 1]  # largest first
    bucket = runner.bucket_for(n)
    for seed in (n, n + 100):  # two batches in a row: each one's inputs reach the graph
        base, z, bonus = _batch(n, seed)
        got = runner.run(base, z, bonus)
        expected = _expected(base, z, bonus)
        assert got.dtype == torch.int64 and got.shape == (n, P)
        assert torch.equal(got, expected), f"n={n}: {got.tolist()} != {expected.tolist()}"
    # n <= 32 replayed its bucket's graph; 33 ran uncaptured (and captured nothing).
    assert backend.replays == ([bucket, bucket] if bucket is not None else [])
    assert backend.capture_calls == [32, 16, 8, 4, 2, 1]


def test_padding_rows_do_not_leak() -> None:
    runner = _runner(RecordingBackend())
    runner.capture_all()
    small = _batch(5, seed=1)
    alone = runner.run(*small)  # bucket 8: rows 5..7 are the zero-filled padding
    assert alone.shape == (5, P) and torch.equal(alone, _expected(*small))
    runner.run(*_batch(8, seed=2))  # fills all 8 rows of the bucket
    after = runner.run(*small)  # rows 5..7 now hold the 8-row batch's rows
    assert torch.equal(after, _expected(*small))
    # A returned result is the caller's: the next replay does not overwrite it.
    runner.run(*_batch(5, seed=3))
    assert torch.equal(after, _expected(*small))


def test_static_buffers_are_reused() -> None:
    backend = RecordingBackend()
    runner = _runner(backend)
    runner.capture_all()
    ptrs = [t.data_ptr() for t in runner.static_inputs(32)]
    for n in (3, 17, 32, 33, 1):
        base, z, bonus = _batch(n, seed=n)
        assert torch.equal(runner.run(base, z, bonus), _expected(base, z, bonus))
    assert [t.data_ptr() for t in runner.static_inputs(32)] == ptrs
    assert backend.capture_calls == [32, 16, 8, 4, 2, 1]  # no recapture
    assert backend.replays == [4, 32, 32, 1]


def test_failed_capture_falls_back_for_that_bucket_alone(caplog: pytest.LogCaptureFixture) -> None:
    backend = RecordingBackend(fail_for=(4,))
    runner = _runner(backend)
    with caplog.at_level(logging.WARNING, logger=cuda_graph.__name__):
        report = runner.capture_all()
        assert report.captured == [32, 16, 8, 2, 1]
        assert list(report.failed) == [4] and "stand-in capture failure for bucket 4" in report.failed[4]
        assert runner.captured_buckets == (1, 2, 8, 16, 32)
        for n in (3, 4, 3, 5, 2):
            base, z, bonus = _batch(n, seed=n)
            assert torch.equal(runner.run(base, z, bonus), _expected(base, z, bonus)), f"n={n}"
    assert backend.replays == [8, 2]  # bucket-4 batches ran uncaptured; the others replayed
    assert backend.capture_calls == [32, 16, 8, 4, 2, 1]  # no retry of bucket 4 inside a request
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING and "bucket 4" in r.getMessage()]
    assert len(warnings) == 1, [r.getMessage() for r in caplog.records]


def test_batches_above_the_largest_bucket_run_uncaptured() -> None:
    backend = RecordingBackend()
    runner = _runner(backend, buckets=(1, 2, 4))
    runner.capture_all()
    for n in (5, 40):
        base, z, bonus = _batch(n, seed=n)
        assert torch.equal(runner.run(base, z, bonus), _expected(base, z, bonus)), f"n={n}"
    assert backend.replays == [] and backend.capture_calls == [4, 2, 1]


def test_inputs_already_in_the_static_buffers_are_not_copied() -> None:
    runner = _runner(RecordingBackend())
    runner.capture_all()
    base, z, bonus = _batch(3, seed=7)
    static = runner.static_inputs(3)
    for dst, src in zip(static, (base, z, bonus)):
        dst.copy_(src)
    with _StaticCopies(static) as copies:
        got = runner.run(*static)
    assert copies.count == 0
    assert torch.equal(got, _expected(base, z, bonus))
    other = _batch(3, seed=8)  # fresh tensors are copied, all three
    with _StaticCopies(static) as copies:
        got = runner.run(*other)
    assert copies.count == 3
    assert torch.equal(got, _expected(*other))


def test_lazy_mode_captures_a_bucket_on_its_first_batch() -> None:
    """A runner never captured at start (graph_runner_for outside a server) captures on first use, once."""
    backend = RecordingBackend(fail_for=(2,))
    runner = _runner(backend)
    for n in (3, 3, 2, 2, 1):
        base, z, bonus = _batch(n, seed=n)
        assert torch.equal(runner.run(base, z, bonus), _expected(base, z, bonus)), f"n={n}"
    assert backend.capture_calls == [4, 2, 1] and backend.replays == [4, 4, 1]
    assert list(runner.failed) == [2]


def test_no_lazy_capture_inside_requests() -> None:
    """lazy_capture=False (what graph_runner_for makes once a server captured at start): batches run uncaptured
    until capture_all, and are never captured inside a request."""
    backend = RecordingBackend()
    runner = _runner(backend, lazy_capture=False)
    for n in (3, 1):
        base, z, bonus = _batch(n, seed=n)
        assert torch.equal(runner.run(base, z, bonus), _expected(base, z, bonus)), f"n={n}"
    assert backend.capture_calls == [] and backend.replays == []
    runner.capture_all()
    runner.run(*_batch(3, seed=3))
    assert backend.replays == [4]


def test_capture_report_and_empty_buckets() -> None:
    report = _runner(RecordingBackend()).capture_all()
    assert report.graph_bytes is None  # the stand-in does not measure memory
    assert report.static_bytes == 32 * P * V * 4 + 32 * P * HDIM * 4 + 32 * 8 + 32 * P * 8
    backend = RecordingBackend()
    runner = _runner(backend, buckets=())  # SGLang's decode graphs disabled: nothing captured
    report = runner.capture_all()
    assert report.captured == [] and report.static_bytes == 0
    base, z, bonus = _batch(3, seed=3)
    assert torch.equal(runner.run(base, z, bonus), _expected(base, z, bonus))
    assert backend.capture_calls == [] and backend.replays == []


def test_prepared_runner_is_the_one_correction_loop_uses(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cuda_graph, "_RUNNERS", OrderedDict())
    monkeypatch.setattr(cuda_graph, "_CAPTURE_AT_START_ONLY", False)
    monkeypatch.setattr(cuda_graph, "_MISSES_LOGGED", set())
    backend = RecordingBackend()
    runner, report = prepare_graph_runner(HEAD, EMBED, PDL, P, V, HDIM, base_dtype=torch.float32,
                                          z_dtype=torch.float32, buckets=(1, 2), backend=backend)
    assert report.captured == [2, 1] and not runner.lazy_capture
    base, z, _ = _batch(2, seed=0)
    assert graph_runner_for(HEAD, EMBED, PDL, base, z) is runner
    # Another block shape has no prepared runner: made on use, and it never captures inside a request.
    other = graph_runner_for(HEAD, EMBED, PDL, base[:, :3], z[:, :3])
    assert other is not runner and not other.lazy_capture and other.captured_buckets == ()


def test_buckets_from_sglang_server_args() -> None:
    pytest.importorskip("sglang", reason="SGLang's own server args (the GPU check machines have no SGLang)")
    from sglang.srt.arg_groups.arg_utils import field_names
    from sglang.srt.arg_groups.cuda_graph_hook import generate_decode_cuda_graph_batch_sizes
    from sglang.srt.model_executor.cuda_graph_config import CudaGraphConfig, PhaseConfig
    from sglang.srt.server_args import ServerArgs

    # The flags read here are SGLang's own fields (a rename upstream fails this test).
    read = {"cuda_graph_config", "cuda_graph_bs_decode", "cuda_graph_max_bs_decode", "cuda_graph_backend_decode",
            "disable_decode_cuda_graph", "disable_cuda_graph", "disable_cuda_graph_padding", "speculative_algorithm"}
    assert read <= set(field_names(ServerArgs))

    def args(**kw) -> SimpleNamespace:
        fields = dict(cuda_graph_config=None, cuda_graph_bs_decode=None, cuda_graph_max_bs_decode=None,
                      cuda_graph_backend_decode=None, disable_decode_cuda_graph=False, disable_cuda_graph=False,
                      disable_cuda_graph_padding=False, speculative_algorithm="DOMINO")
        fields.update(kw)
        return SimpleNamespace(**fields)

    assert sglang_decode_batch_sizes(args()) == DEFAULT_BUCKETS
    assert sglang_decode_batch_sizes(args(cuda_graph_bs_decode=[8, 1, 3])) == (1, 3, 8)
    spec = sglang_decode_batch_sizes(args(cuda_graph_max_bs_decode=48))
    assert spec == (1, 2, 3, 4, 5, 6, 7, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30, 32, 40, 44, 48)
    assert spec == tuple(generate_decode_cuda_graph_batch_sizes(args(), 48))
    assert sglang_decode_batch_sizes(args(cuda_graph_max_bs_decode=12, disable_cuda_graph_padding=True)) == tuple(
        range(1, 13))
    assert sglang_decode_batch_sizes(args(cuda_graph_max_bs_decode=48, disable_decode_cuda_graph=True)) == ()
    assert sglang_decode_batch_sizes(args(cuda_graph_backend_decode="disabled")) == ()
    # Resolved args (a running server's): the materialised decode list wins over the raw flags.
    resolved = CudaGraphConfig(decode=PhaseConfig(backend="full", max_bs=24, bs=[1, 2, 3, 24]))
    assert sglang_decode_batch_sizes(args(cuda_graph_config=resolved, cuda_graph_max_bs_decode=48,
                                          _cuda_graph_config_locked=set())) == (1, 2, 3, 24)
    off = CudaGraphConfig(decode=PhaseConfig(backend="disabled", max_bs=24, bs=[1, 2]))
    assert sglang_decode_batch_sizes(args(cuda_graph_config=off, _cuda_graph_config_locked=set())) == ()
