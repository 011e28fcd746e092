"""The fused correction loop (the CUDA-graph path's structure) against the eager loop, and the
CUDA-graph runner's behaviour on a CPU-only machine."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from kernel_env import triton_ready  # noqa: F401  (first: picks the interpreter before triton loads)

from sglang_domino import kernels
from sglang_domino.kernels.reference import DominoHeadWeights, correction_loop_eager


def _block(n: int, p: int = 5, v: int = 300, hdim: int = 32, g: int = 16, r: int = 8, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    head = DominoHeadWeights(
        w_ih=torch.randn(3 * g, hdim, generator=gen) * 0.3,
        w_hh=torch.randn(3 * g, g, generator=gen) * 0.3,
        w1=torch.randn(r, hdim + g, generator=gen) * 0.3,
        w2=torch.randn(v, r, generator=gen),
    )
    embed = torch.randn(v, hdim, generator=gen)
    base = torch.randn(n, p, v, generator=gen)
    z = torch.randn(n, p, hdim, generator=gen)
    bonus = torch.randint(0, v, (n,), generator=gen)
    return base, z, bonus, embed, head


def _to(dev: torch.device, base, z, bonus, embed, head):
    return (base.to(dev), z.to(dev), bonus.to(dev), embed.to(dev),
            DominoHeadWeights(*(t.to(dev) for t in (head.w_ih, head.w_hh, head.w1, head.w2))))


@pytest.mark.parametrize("n", [1, 3])
@pytest.mark.parametrize("pdl", [0, 1, 2])
def test_fused_loop_matches_eager(triton_ready, n: int, pdl: int) -> None:
    from sglang_domino.kernels.cuda_graph import correction_loop_fused

    base, z, bonus, embed, head = _block(n, seed=10 * n + pdl)
    expected, _ = correction_loop_eager(base, z, bonus, embed, head, pdl)
    got = correction_loop_fused(*_to(triton_ready, base, z, bonus, embed, head), pdl, block_v=64)
    assert got.dtype == torch.int64 and got.shape == expected.shape
    assert torch.equal(got.cpu(), expected)


def test_fused_loop_pruned_and_out_buffer(triton_ready) -> None:
    from sglang_domino.kernels.cuda_graph import correction_loop_fused

    base, z, bonus, embed, head = _block(2, seed=5)
    expected, _ = correction_loop_eager(base, z, bonus, embed, head, 1)
    args = _to(triton_ready, base, z, bonus, embed, head)
    out = torch.full((2, base.shape[1]), -1, dtype=torch.int64, device=triton_ready)
    got = correction_loop_fused(*args, 1, prune=True, block_v=32, out=out)
    assert got.data_ptr() == out.data_ptr()
    assert torch.equal(out.cpu(), expected)


def test_fused_loop_without_head_or_corrected_slots(triton_ready) -> None:
    from sglang_domino.kernels.cuda_graph import correction_loop_fused

    base, z, bonus, embed, head = _block(2, p=3, seed=6)
    args = list(_to(triton_ready, base, z, bonus, embed, head))
    assert torch.equal(correction_loop_fused(*args[:4], None, 0).cpu(), base.argmax(-1))
    # pure_draft_prefix_len >= P: no slot is corrected, the GRU never runs.
    assert torch.equal(correction_loop_fused(*args, 3).cpu(), base.argmax(-1))


def test_graph_runner_refuses_cleanly_on_cpu() -> None:
    from sglang_domino.kernels.cuda_graph import CorrectionLoopGraphRunner

    if torch.cuda.is_available():
        pytest.skip("checks the CPU-only behaviour")
    base, z, bonus, embed, head = _block(3, seed=8)
    runner = CorrectionLoopGraphRunner(head, embed, 1, num_proposals=5, vocab_size=300, hidden_size=32,
                                       base_dtype=torch.float32, z_dtype=torch.float32)
    assert not runner.graphs_supported
    assert runner.bucket_for(3) == 4 and runner.bucket_for(32) == 32 and runner.bucket_for(33) is None
    with pytest.raises(RuntimeError, match="CUDA graphs need CUDA"):
        runner.capture()
    with pytest.raises(RuntimeError):
        runner.static_inputs(2)
    # Running still answers, through the eager reference (no Triton involved).
    expected, _ = correction_loop_eager(base, z, bonus, embed, head, 1)
    assert torch.equal(runner.run(base, z, bonus), expected)
    big_base, big_z, big_bonus = _block(40, seed=9)[:3]  # larger than every bucket, same head
    assert torch.equal(runner.run(big_base, big_z, big_bonus),
                       correction_loop_eager(big_base, big_z, big_bonus, embed, head, 1)[0])


def _gru_by_hand(x: torch.Tensor, h: torch.Tensor, w_ih: torch.Tensor, w_hh: torch.Tensor) -> torch.Tensor:
    """One bias-free GRU step written out (PyTorch's gate order r, z, n), float64 vectors."""
    i_r, i_z, i_n = (w_ih.double() @ x.double()).chunk(3)
    h_r, h_z, h_n = (w_hh.double() @ h).chunk(3)
    r, z = torch.sigmoid(i_r + h_r), torch.sigmoid(i_z + h_z)
    return (1 - z) * torch.tanh(i_n + r * h_n) + z * h


def _correction_by_hand(base, z, bonus, embed, head, pdl: int, pick):
    """The Domino correction written out row by row in float64 (kernels/reference.py's module docstring):
    slot k >= pdl takes base_k + W2 · SiLU(W1 · [z_k | h_k]), h_k the GRU state after [bonus, d_0 .. d_{k-1}]
    (recomputed from zero for every slot); ``pick`` chooses d_k from the slot's logits. -> tokens, logits."""
    n, p, v = base.shape
    tokens, logits_out = torch.empty(n, p, dtype=torch.long), torch.empty(n, p, v, dtype=torch.float64)
    for row in range(n):
        seen = [int(bonus[row])]
        for k in range(p):
            logits = base[row, k].double()
            if head is not None and k >= pdl:
                h = torch.zeros(head.w_hh.shape[1], dtype=torch.float64)
                for tok in seen:
                    h = _gru_by_hand(embed[tok], h, head.w_ih, head.w_hh)
                u = head.w1.double() @ torch.cat((z[row, k].double(), h))
                logits = logits + head.w2.double() @ (u * torch.sigmoid(u))
            logits_out[row, k] = logits
            tokens[row, k] = pick(logits)
            seen.append(int(tokens[row, k]))
    return tokens, logits_out


def _second_best(logits: torch.Tensor) -> torch.Tensor:
    return logits.topk(2, dim=-1).indices[..., 1]


def test_package_correction_loop_on_cpu_is_eager(monkeypatch: pytest.MonkeyPatch) -> None:
    """On CPU the package's correction loop is the Domino correction (checked against a hand-written one, greedy
    and with a sampler whose choices feed the GRU), and never the fused Triton path, even where Triton imports."""
    if kernels.triton_available():  # make the fused path reachable on this machine, then refuse it
        from sglang_domino.kernels import cuda_graph, triton_gru

        def no_fused(*args, **kwargs):
            raise AssertionError("the fused Triton correction loop was taken for CPU tensors")

        monkeypatch.setattr(triton_gru, "interpreter_active", lambda: False)
        monkeypatch.setattr(cuda_graph, "graph_runner_for", no_fused)
    base, z, bonus, embed, head = _block(3, seed=12)
    for pdl in (0, 1, 2):
        got, probs = kernels.correction_loop(base, z, bonus, embed, head, pdl)
        assert probs is None
        expected, _ = _correction_by_hand(base, z, bonus, embed, head, pdl, pick=lambda lg: lg.argmax())
        assert torch.equal(got, expected), f"pure_draft_prefix_len={pdl}: {got.tolist()} != {expected.tolist()}"
    got, probs = kernels.correction_loop(base, z, bonus, embed, None, 0)
    assert probs is None and torch.equal(got, base.argmax(-1))  # no head: base logits only

    slots = []

    def sampler(logits: torch.Tensor, slot: int):
        slots.append(slot)
        return _second_best(logits), torch.softmax(logits, dim=-1)

    got, probs = kernels.correction_loop(base, z, bonus, embed, head, 1, select=sampler)
    expected, logits = _correction_by_hand(base, z, bonus, embed, head, 1, pick=_second_best)
    assert slots == list(range(base.shape[1]))
    assert torch.equal(got, expected)
    assert probs is not None and probs.shape == base.shape
    torch.testing.assert_close(probs.double(), torch.softmax(logits, dim=-1), atol=1e-6, rtol=1e-4)


def test_package_import_does_not_import_triton() -> None:
    """The interpreter can only be chosen before the first `import triton`; importing the package
    (and the CPU-side interface) must leave that choice open."""
    code = (
        "import sys, sglang_domino.kernels as k; import sglang_domino.rollout; "
        "assert 'triton' not in sys.modules, 'triton imported'; "
        "assert 'correction_loop' in k.__all__"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


@pytest.mark.slow
def test_kernels_compile_for_sm90() -> None:
    """Compiler-mode check (no GPU needed): every kernel variant lowers to an sm_90 cubin.

    ~1-2 min on 2 cores with a cold Triton cache (~/.triton/cache), seconds when cached."""
    from pathlib import Path

    bundled = Path(__import__("importlib").util.find_spec("triton").origin).parent / "backends" / "nvidia" / "bin"
    if not (bundled / "ptxas").exists():
        pytest.skip("triton's bundled ptxas is missing")
    script = Path(__file__).with_name("compile_sm90.py")
    env = {k: v for k, v in __import__("os").environ.items() if k != "TRITON_INTERPRET"}
    res = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0 and "ALL OK" in res.stdout, res.stdout[-2000:] + res.stderr[-4000:]


def test_fused_loop_takes_upstream_strided_anchor_column(triton_ready) -> None:
    """Issue 26: upstream passes ``anchor_token_ids = block_ids[:, 0]``, a column view with stride block_size.

    Above the largest CUDA-graph bucket (32) that view reaches the Triton GRU kernel uncopied; it must
    read token ids through the view's stride, not as if they were packed (rows 1.. drafted from the
    wrong tokens before)."""
    from sglang_domino.kernels.cuda_graph import DEFAULT_BUCKETS, correction_loop_fused

    n, block_size = 40, 16
    assert n > DEFAULT_BUCKETS[-1]
    base, z, _, embed, head = _block(n, p=block_size - 1, seed=26)
    gen = torch.Generator().manual_seed(260)
    block_ids = torch.randint(0, base.shape[-1], (n, block_size), generator=gen)
    bonus = block_ids[:, 0]
    assert bonus.stride() == (block_size,)
    expected, _ = correction_loop_eager(base, z, bonus.contiguous(), embed, head, 1)
    base_d, z_d, _, embed_d, head_d = _to(triton_ready, base, z, bonus, embed, head)
    got = correction_loop_fused(base_d, z_d, block_ids.to(triton_ready)[:, 0], embed_d, head_d, 1, block_v=64)
    wrong_rows = (got.cpu() != expected).any(1).nonzero().flatten().tolist()
    assert not wrong_rows, f"rows drafted from the wrong anchor tokens: {wrong_rows}"
