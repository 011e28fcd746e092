"""The Triton GRU cell against torch.nn.GRUCell(bias=False)."""

from __future__ import annotations

import pytest
import torch
from kernel_env import triton_ready  # noqa: F401  (first: picks the interpreter before triton loads)

pytestmark = pytest.mark.usefixtures("triton_ready")

SHAPES = [(1, 32, 16), (3, 40, 24), (7, 64, 48), (35, 16, 16)]  # last: two row blocks


def _cell(hdim: int, g: int, seed: int) -> torch.nn.GRUCell:
    torch.manual_seed(seed)
    return torch.nn.GRUCell(hdim, g, bias=False)


@pytest.mark.parametrize("n,hdim,g", SHAPES)
def test_fp32_matches_grucell(triton_ready: torch.device, n: int, hdim: int, g: int) -> None:
    from sglang_domino.kernels.triton_gru import gru_cell

    cell = _cell(hdim, g, n)
    x, h = torch.randn(n, hdim), torch.randn(n, g)
    with torch.no_grad():
        ref = cell(x, h)
    dev = triton_ready
    out = gru_cell(x.to(dev), h.to(dev), cell.weight_ih.detach().to(dev), cell.weight_hh.detach().to(dev))
    assert out.dtype == torch.float32 and out.shape == (n, g)
    torch.testing.assert_close(out.cpu(), ref, atol=2e-6, rtol=1e-5)


@pytest.mark.parametrize("n,hdim,g", SHAPES[:3])
def test_bf16_inputs_accumulate_in_fp32(triton_ready: torch.device, n: int, hdim: int, g: int) -> None:
    from sglang_domino.kernels.triton_gru import gru_cell

    cell = _cell(hdim, g, 10 + n)
    x, h = torch.randn(n, hdim).bfloat16(), torch.randn(n, g).bfloat16()
    w_ih, w_hh = cell.weight_ih.detach().bfloat16(), cell.weight_hh.detach().bfloat16()
    # Same bf16 values, exact fp32 math: the kernel may differ only by rounding its output to bf16.
    ref = torch.ops.aten.gru_cell.default(x.float(), h.float(), w_ih.float(), w_hh.float(), None, None)
    dev = triton_ready
    out = gru_cell(x.to(dev), h.to(dev), w_ih.to(dev), w_hh.to(dev)).cpu()
    assert out.dtype == torch.bfloat16
    half_ulp = ref.abs().clamp_min(2.0**-30) * 2.0**-8
    assert ((out.float() - ref).abs() <= half_ulp + 1e-6).all()


def test_token_gather_variant(triton_ready: torch.device) -> None:
    from sglang_domino.kernels.triton_gru import gru_cell_tokens

    n, hdim, g, v = 5, 24, 16, 50
    cell = _cell(hdim, g, 3)
    emb, h = torch.randn(v, hdim), torch.randn(n, g)
    tok = torch.tensor([0, 49, 7, 7, 13])
    with torch.no_grad():
        ref = cell(emb[tok], h)
    dev = triton_ready
    out = gru_cell_tokens(tok.to(dev), emb.to(dev), h.to(dev), cell.weight_ih.detach().to(dev),
                          cell.weight_hh.detach().to(dev))
    torch.testing.assert_close(out.cpu(), ref, atol=2e-6, rtol=1e-5)


def test_strided_inputs(triton_ready: torch.device) -> None:
    from sglang_domino.kernels.triton_gru import gru_cell

    n, hdim, g = 4, 32, 16
    cell = _cell(hdim, g, 4)
    big_x, big_h = torch.randn(n, 3, hdim), torch.randn(n, 2, g)
    x, h = big_x[:, 1], big_h[:, 0]  # row strides != row lengths
    with torch.no_grad():
        ref = cell(x, h)
    dev = triton_ready
    out = gru_cell(big_x.to(dev)[:, 1], big_h.to(dev)[:, 0], cell.weight_ih.detach().to(dev),
                   cell.weight_hh.detach().to(dev))
    torch.testing.assert_close(out.cpu(), ref, atol=2e-6, rtol=1e-5)


def _gru_by_hand(x: torch.Tensor, h: torch.Tensor, w_ih: torch.Tensor, w_hh: torch.Tensor) -> torch.Tensor:
    """The bias-free GRU step written out (PyTorch's gate order r, z, n), in float64."""
    x, h, w_ih, w_hh = (t.double() for t in (x, h, w_ih, w_hh))
    i_r, i_z, i_n = (x @ w_ih.T).chunk(3, dim=-1)
    h_r, h_z, h_n = (h @ w_hh.T).chunk(3, dim=-1)
    r, z = torch.sigmoid(i_r + h_r), torch.sigmoid(i_z + h_z)
    n = torch.tanh(i_n + r * h_n)
    return (1 - z) * n + z * h


def test_package_gru_cell_dispatch_on_cpu_is_the_reference(monkeypatch: pytest.MonkeyPatch) -> None:
    """On CPU tensors the package's gru_cell computes the GRU step eagerly, never through the Triton kernel
    (even where the interpreter is off and Triton imports)."""
    from sglang_domino import kernels
    from sglang_domino.kernels import triton_gru

    def no_triton(*args):
        raise AssertionError("the Triton GRU kernel was called for CPU tensors")

    monkeypatch.setattr(triton_gru, "gru_cell", no_triton)
    monkeypatch.setattr(triton_gru, "interpreter_active", lambda: False)
    n, hdim, g = 3, 16, 8
    cell = _cell(hdim, g, 5)
    x, h = torch.randn(n, hdim), torch.randn(n, g)
    w_ih, w_hh = cell.weight_ih.detach(), cell.weight_hh.detach()
    out = kernels.gru_cell(x, h, w_ih, w_hh)
    assert out.dtype == torch.float32 and out.shape == (n, g)
    torch.testing.assert_close(out.double(), _gru_by_hand(x, h, w_ih, w_hh), atol=1e-6, rtol=1e-5)
