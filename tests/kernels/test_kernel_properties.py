"""Properties of the Triton kernels over seeded random problems, against an independent float64 oracle.

Issue 26: random shapes (real vocabularies 49,152 and 151,936 with small hidden sizes, so the CPU
interpreter stays fast), non-contiguous inputs (row-padded, column-stepped, transposed views, and the
column view ``block_ids[:, 0]`` upstream passes as anchor tokens), fp32 and bf16, exact ties, every
``pure_draft_prefix_len`` from 0 to P, and N across the CUDA-graph bucket edges.

The oracle is the math written out here in float64 (kernels/reference.py's module docstring):

    GRU step (bias-free, gate order r, z, n):  r = s(W_ir x + W_hr h), g = s(W_iz x + W_hz h),
                                               n = tanh(W_in x + r * W_hn h), h' = (1 - g) n + g h
    corrected logits:                          l = base + W2 · SiLU(W1 · [z | h])

A kernel token must be the oracle's argmax wherever the oracle's gap to the next distinct value exceeds
twice the bound ``tol`` on the kernel's logit error, and must score within ``2 * tol`` of the oracle's
maximum everywhere. fp32: ``tol`` is an fp32 accumulation bound. bf16: the kernel rounds
``u = SiLU(...)`` to bf16 (as eager bf16 does), so ``tol`` adds ``2^-8 · |W2| · |u|``.
"""

from __future__ import annotations

import pytest
import torch
from kernel_env import triton_ready  # noqa: F401  (first: picks the interpreter before triton loads)

pytestmark = pytest.mark.usefixtures("triton_ready")

BUCKET_EDGES = (1, 2, 3, 31, 32, 33)
REAL_VOCABS = (49_152, 151_936)
# The interpreter runs one Python-level program per vocabulary tile: wide tiles keep real vocabularies fast.
WIDE_TILE = 4096
BF16_REL = 2.0**-8  # one bf16 ulp, relative (round-to-nearest is half of it)
DTYPES = (torch.float32, torch.bfloat16)


# --------------------------------------------------------------------------------------------------
# The float64 oracle
# --------------------------------------------------------------------------------------------------


def gru64(x: torch.Tensor, h: torch.Tensor, w_ih: torch.Tensor, w_hh: torch.Tensor) -> torch.Tensor:
    x, h, w_ih, w_hh = (t.double() for t in (x, h, w_ih, w_hh))
    i_r, i_z, i_n = (x @ w_ih.T).chunk(3, dim=-1)
    h_r, h_z, h_n = (h @ w_hh.T).chunk(3, dim=-1)
    r = 1.0 / (1.0 + torch.exp(-(i_r + h_r)))
    g = 1.0 / (1.0 + torch.exp(-(i_z + h_z)))
    n = torch.tanh(i_n + r * h_n)
    return (1.0 - g) * n + g * h


def hidden64(z: torch.Tensor, h: torch.Tensor, w1: torch.Tensor) -> torch.Tensor:
    """u = SiLU(W1 · [z | h]), float64 [N, r]."""
    a = torch.cat((z.double(), h.double()), dim=-1) @ w1.double().T
    return a / (1.0 + torch.exp(-a))


def logit_tol(u: torch.Tensor, w2: torch.Tensor, base: torch.Tensor, w_dtype: torch.dtype,
              extra_u: torch.Tensor | None = None) -> torch.Tensor:
    """Per-row bound on |kernel logit - oracle logit| given u (float64 [N, r]) and optional extra |Δu| [N, r]."""
    du = 1e-6 * (u.abs() + 1e-3)  # fp32 accumulation in the W1 product and SiLU
    if w_dtype == torch.bfloat16:
        du = du + BF16_REL * u.abs()
    if extra_u is not None:
        du = du + extra_u
    err = (du @ w2.double().abs().T).amax(dim=-1)
    scale = base.double().abs().amax(dim=-1).nan_to_num(0.0, posinf=0.0) + (u.abs() @ w2.double().abs().T).amax(-1)
    return err + 1e-6 * scale + 1e-30


def check_tokens(got: torch.Tensor, oracle: torch.Tensor, tol: torch.Tensor, what: str) -> int:
    """The kernel's tokens against float64 oracle logits [N, V]; returns how many rows were decisive."""
    got = got.cpu().long()
    tol = torch.as_tensor(tol, dtype=torch.float64).expand(oracle.shape[0])
    top = oracle.amax(dim=-1)
    best = oracle.argmax(dim=-1)  # ties: lowest index, the rule the kernels follow
    runner_up = torch.where(oracle < top[:, None], oracle, torch.tensor(float("-inf"), dtype=torch.float64)).amax(-1)
    decisive = (top - runner_up) > 2 * tol
    bad = decisive & (got != best)
    rows = lambda m: m.nonzero().flatten().tolist()  # noqa: E731
    assert not bad.any(), f"{what}: rows {rows(bad)} got {got[bad].tolist()} != {best[bad].tolist()}"
    picked = oracle.gather(1, got[:, None])[:, 0]
    short = picked < top - 2 * tol
    assert not short.any(), f"{what}: rows {rows(short)} picked {picked[short].tolist()} < {top[short].tolist()}"
    return int(decisive.sum())


# --------------------------------------------------------------------------------------------------
# Random problems in random layouts
# --------------------------------------------------------------------------------------------------

LAYOUTS = ("packed", "row_padded", "col_step", "transposed")


def laid_out(t: torch.Tensor, layout: str) -> torch.Tensor:
    """``t`` (2-D) with the same values in another memory layout (a view, never contiguous unless packed)."""
    rows, cols = t.shape
    if layout == "packed":
        return t.contiguous()
    if layout == "row_padded":  # unit last stride, row stride > row length
        buf = torch.full((rows, cols + 3), float("nan"), dtype=t.dtype)
        buf[:, :cols] = t
        return buf[:, :cols]
    if layout == "col_step":  # last stride 2
        buf = torch.full((rows, 2 * cols), float("nan"), dtype=t.dtype)
        buf[:, ::2] = t
        return buf[:, ::2]
    if layout == "transposed":  # transposed, then not made contiguous: strides (1, rows)
        return t.T.contiguous().T
    raise ValueError(layout)


def token_view(tokens: torch.Tensor, layout: str, gen: torch.Generator, vocab: int) -> torch.Tensor:
    """[N] token ids as upstream may hand them over."""
    if layout == "packed":
        return tokens.contiguous()
    if layout == "anchor_column":  # upstream: anchor_token_ids = block_ids[:, 0], stride block_size
        block = torch.randint(0, vocab, (tokens.shape[0], 16), generator=gen)
        block[:, 0] = tokens
        return block[:, 0]
    if layout == "int32_strided":
        buf = torch.zeros(tokens.shape[0], 3, dtype=torch.int32)
        buf[:, 1] = tokens.int()
        return buf[:, 1]
    raise ValueError(layout)


def pick(gen: torch.Generator, options):
    return options[int(torch.randint(0, len(options), (1,), generator=gen))]


def randint(gen: torch.Generator, lo: int, hi: int) -> int:
    return int(torch.randint(lo, hi + 1, (1,), generator=gen))


def on(dev: torch.device, t: torch.Tensor) -> torch.Tensor:
    """``t`` on ``dev`` keeping its strides (``Tensor.to`` would keep them too, but say so)."""
    if dev.type == "cpu":
        return t
    out = torch.empty_strided(t.size(), t.stride(), dtype=t.dtype, device=dev)
    return out.copy_(t)


def head_weights(gen: torch.Generator, hdim: int, g: int, r: int, v: int, dtype: torch.dtype):
    w_ih = torch.randn(3 * g, hdim, generator=gen) * hdim**-0.5
    w_hh = torch.randn(3 * g, g, generator=gen) * g**-0.5
    w1 = torch.randn(r, hdim + g, generator=gen) * (hdim + g) ** -0.5
    w2 = torch.randn(v, r, generator=gen) * 0.7
    return tuple(t.to(dtype) for t in (w_ih, w_hh, w1, w2))


# --------------------------------------------------------------------------------------------------
# GRU
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_gru_cell(triton_ready, seed: int, dtype: torch.dtype) -> None:
    from sglang_domino.kernels.triton_gru import gru_cell

    gen = torch.Generator().manual_seed(100 + seed)
    for i, n in enumerate(BUCKET_EDGES):
        hdim, g = randint(gen, 3, 40), randint(gen, 1, 24)
        w_ih, w_hh = head_weights(gen, hdim, g, 2, 2, dtype)[:2]
        x = torch.randn(n, hdim, generator=gen).to(dtype)
        h = (torch.rand(n, g, generator=gen) * 2 - 1).to(dtype)
        lx, lh, lw, lo = (LAYOUTS[(i + k + seed) % len(LAYOUTS)] for k in range(4))
        out = laid_out(torch.zeros(n, g, dtype=dtype), lo)
        got = gru_cell(on(triton_ready, laid_out(x, lx)), on(triton_ready, laid_out(h, lh)),
                       on(triton_ready, laid_out(w_ih, lw)), on(triton_ready, laid_out(w_hh, lw)),
                       out=on(triton_ready, out))
        assert got.dtype == dtype and got.shape == (n, g)
        ref = gru64(x, h, w_ih, w_hh)
        rtol = BF16_REL if dtype == torch.bfloat16 else 1e-6
        err = (got.cpu().double() - ref).abs()
        assert (err <= rtol * ref.abs() + 2e-6).all(), f"n={n} layouts {lx, lh, lw, lo}: max err {err.max():.3g}"
        if triton_ready.type == "cpu":
            assert got is out or torch.equal(out, got)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("vocab", REAL_VOCABS)
def test_gru_cell_tokens(triton_ready, vocab: int, dtype: torch.dtype) -> None:
    """The gather variant reads token ids through any stride and any integer dtype, in a real vocabulary."""
    from sglang_domino.kernels.triton_gru import gru_cell_tokens

    gen = torch.Generator().manual_seed(vocab + (dtype == torch.bfloat16))
    hdim, g = 16, 8
    w_ih, w_hh = head_weights(gen, hdim, g, 2, 2, dtype)[:2]
    embed = torch.randn(vocab, hdim, generator=gen).to(dtype)
    for i, n in enumerate(BUCKET_EDGES):
        tokens = torch.randint(0, vocab, (n,), generator=gen)
        tokens[0] = vocab - 1  # the last row of the table
        tok_layout = ("anchor_column", "int32_strided", "packed")[i % 3]
        emb_layout = ("packed", "row_padded")[i % 2]
        h = (torch.rand(n, g, generator=gen) * 2 - 1).to(dtype)
        got = gru_cell_tokens(on(triton_ready, token_view(tokens, tok_layout, gen, vocab)),
                              on(triton_ready, laid_out(embed, emb_layout)),
                              on(triton_ready, laid_out(h, "transposed")),
                              on(triton_ready, w_ih), on(triton_ready, w_hh))
        ref = gru64(embed[tokens], h, w_ih, w_hh)
        rtol = BF16_REL if dtype == torch.bfloat16 else 1e-6
        err = (got.cpu().double() - ref).abs()
        assert (err <= rtol * ref.abs() + 2e-6).all(), f"n={n} tokens {tok_layout}: max err {err.max():.3g}"


def test_gru_cell_out_must_not_alias_h(triton_ready) -> None:
    from sglang_domino.kernels.triton_gru import gru_cell

    h = on(triton_ready, torch.randn(3, 8))
    x, w_ih, w_hh = (on(triton_ready, t) for t in (torch.randn(3, 4), torch.randn(24, 4), torch.randn(24, 8)))
    with pytest.raises(ValueError, match="alias"):
        gru_cell(x, h, w_ih, w_hh, out=h)
    with pytest.raises(ValueError, match="out must be"):
        gru_cell(x, h, w_ih, w_hh, out=torch.empty(3, 7, device=h.device))


# --------------------------------------------------------------------------------------------------
# Correction: hidden, argmax, sampling, tile norms
# --------------------------------------------------------------------------------------------------


def correction_problem(gen: torch.Generator, n: int, v: int, dtype: torch.dtype, base_scale: float = 1.0):
    hdim, g, r = randint(gen, 4, 40), randint(gen, 2, 24), randint(gen, 2, 20)
    w1, w2 = head_weights(gen, hdim, g, r, v, dtype)[2:]
    base = (torch.randn(n, v, generator=gen) * base_scale).to(dtype)
    z = torch.randn(n, hdim, generator=gen).to(dtype)
    h = (torch.rand(n, g, generator=gen) * 2 - 1).to(dtype)
    return base, z, h, w1, w2


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("seed", [0, 1])
def test_correction_hidden(triton_ready, seed: int, dtype: torch.dtype) -> None:
    from sglang_domino.kernels.triton_correction import correction_hidden

    gen = torch.Generator().manual_seed(200 + seed)
    for i, n in enumerate(BUCKET_EDGES):
        _, z, h, w1, _ = correction_problem(gen, n, 1, dtype)
        lz, lh, lw = (LAYOUTS[(i + k) % len(LAYOUTS)] for k in range(3))
        u = correction_hidden(on(triton_ready, laid_out(z, lz)), on(triton_ready, laid_out(h, lh)),
                              on(triton_ready, laid_out(w1, lw)), dtype).cpu()
        ref = hidden64(z, h, w1)
        rtol = BF16_REL if dtype == torch.bfloat16 else 1e-6
        err = (u.double() - ref).abs()
        assert u.dtype == torch.float32 and (err <= rtol * ref.abs() + 1e-6).all(), f"n={n}: {err.max():.3g}"


# (seed, vocab, block_v): vocabularies never a tile multiple except 49,152 = 12 x 4096.
ARGMAX_CASES = [
    (0, 257, 16), (1, 1000, None), (2, 4099, 1024),
    (3, 49_152, WIDE_TILE), (4, 49_152, 2048), (5, 151_936, WIDE_TILE), (6, 151_936, WIDE_TILE),
]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("seed,vocab,block_v", ARGMAX_CASES)
def test_fused_argmax(triton_ready, seed: int, vocab: int, block_v, dtype: torch.dtype) -> None:
    """Random N at the bucket edges, random layouts, pruned or not (large base spread: pruning skips tiles)."""
    from sglang_domino.kernels.triton_correction import fused_correction_argmax

    gen = torch.Generator().manual_seed(300 + seed)
    n = BUCKET_EDGES[seed % len(BUCKET_EDGES)]
    prune = seed % 2 == 1
    base, z, h, w1, w2 = correction_problem(gen, n, vocab, dtype, base_scale=(4.0 if prune else 1.0))
    slots = randint(gen, 1, 4)  # base and z as the slot views base[:, k] / z[:, k] of [N, P, *] blocks
    base_block = torch.randn(n, slots, vocab, generator=gen).to(dtype)
    z_block = torch.randn(n, slots, z.shape[1], generator=gen).to(dtype)
    base_block[:, slots - 1], z_block[:, slots - 1] = base, z
    lh, lw1, lw2 = pick(gen, LAYOUTS), pick(gen, LAYOUTS), pick(gen, ("packed", "row_padded", "transposed"))
    tok, best = fused_correction_argmax(
        on(triton_ready, base_block)[:, slots - 1], on(triton_ready, z_block)[:, slots - 1],
        on(triton_ready, laid_out(h, lh)), on(triton_ready, laid_out(w1, lw1)), on(triton_ready, laid_out(w2, lw2)),
        prune, block_v=block_v,
    )
    u = hidden64(z, h, w1)
    oracle = base.double() + u @ w2.double().T
    tol = logit_tol(u, w2, base, dtype)
    decisive = check_tokens(tok, oracle, tol, f"n={n} V={vocab} prune={prune} layouts {lh, lw1, lw2}")
    assert decisive >= (n + 1) // 2, f"only {decisive} of {n} rows decisive: the test has lost its teeth"
    assert ((best.cpu().double() - oracle.amax(-1)).abs() <= 2 * tol).all()


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("seed,vocab,block_v,prune",
                         [(0, 700, 16, False), (1, 700, 64, True), (2, 49_152, WIDE_TILE, True)])
def test_exact_ties_go_to_the_lowest_token(triton_ready, seed: int, vocab: int, block_v: int, prune: bool,
                                           dtype: torch.dtype) -> None:
    """Ties inside tiles and across tiles; torch.argmax's rule: the lowest token id wins.

    Base logits from a few integers and one-hot W2 rows (sign ±1 or 0) make every corrected logit
    ``base_v + c_v · u_{k_v}``: one rounding in any summation order, so equal (base, c, k) tie exactly, in the
    kernel and in the oracle. Half the rows get a zero correction (plain base ties)."""
    from sglang_domino.kernels.triton_correction import fused_correction_argmax

    gen = torch.Generator().manual_seed(400 + seed)
    n = BUCKET_EDGES[(seed + 3) % len(BUCKET_EDGES)]
    _, z, h, w1, _ = correction_problem(gen, n, 1, dtype)
    r = w1.shape[0]
    base = torch.randint(0, 4, (n, vocab), generator=gen).to(dtype)
    sign = torch.randint(-1, 2, (vocab,), generator=gen).to(dtype)
    w2 = torch.zeros(vocab, r, dtype=dtype)
    w2[torch.arange(vocab), torch.randint(0, min(r, 3), (vocab,), generator=gen)] = sign
    z[: n // 2] = 0  # with h = 0 below: u = SiLU(0) = 0, a zero correction
    h[: n // 2] = 0
    tok, _ = fused_correction_argmax(*(on(triton_ready, t) for t in (base, z, h, w1, w2)), prune, block_v=block_v)
    u = hidden64(z, h, w1)
    if dtype == torch.bfloat16:
        u = u.to(torch.bfloat16).double()  # the kernel's documented rounding of u; keeps the ties exact
    oracle = base.double() + u @ w2.double().T
    top = oracle.amax(-1, keepdim=True)
    assert ((oracle == top).sum(-1) > 1).all(), "every row should have a tie at the top"
    check_tokens(tok, oracle, logit_tol(u, w2, base, dtype), f"ties n={n}")
    assert torch.equal(tok.cpu(), oracle.argmax(-1))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("seed,vocab,block_v", [(0, 513, 32), (1, 49_152, WIDE_TILE)])
def test_sample_stats_with_given_noise(triton_ready, seed: int, vocab: int, block_v: int, dtype: torch.dtype) -> None:
    """Gumbel-max token, exact logsumexp and log-probability; noise, temperature and inputs as strided views."""
    from sglang_domino.kernels.triton_correction import fused_correction_sample_stats

    gen = torch.Generator().manual_seed(500 + seed)
    n = BUCKET_EDGES[(seed * 5) % len(BUCKET_EDGES)]
    base, z, h, w1, w2 = correction_problem(gen, n, vocab, dtype)
    temps = torch.rand(n, generator=gen).double() * 1.5 + 0.3
    temp_view = torch.zeros(n, 2)
    temp_view[:, 1] = temps.float()
    unif = torch.rand(n, vocab, generator=gen).clamp(1e-6, 1 - 1e-6)
    st = fused_correction_sample_stats(
        on(triton_ready, laid_out(base, "row_padded")), on(triton_ready, laid_out(z, "transposed")),
        on(triton_ready, laid_out(h, "col_step")), on(triton_ready, w1), on(triton_ready, laid_out(w2, "transposed")),
        on(triton_ready, temp_view)[:, 1], uniform_noise=on(triton_ready, laid_out(unif, "transposed")),
        block_v=block_v,
    )
    temps = temps.float().double()
    u = hidden64(z, h, w1)
    scaled = (base.double() + u @ w2.double().T) / temps[:, None]
    tol = logit_tol(u, w2, base, dtype) / temps
    gumbel = -torch.log(-torch.log(unif.double()))
    check_tokens(st.token_ids, scaled + gumbel, tol + 1e-6 * gumbel.abs().amax(-1), f"sample n={n} V={vocab}")
    lse = torch.logsumexp(scaled, dim=-1)
    assert ((st.logsumexp.cpu().double() - lse).abs() <= tol + 1e-5 * lse.abs()).all()
    logp = scaled.gather(1, st.token_ids.cpu()[:, None])[:, 0] - lse
    assert ((st.token_logprob.cpu().double() - logp).abs() <= 2 * tol + 1e-5 * (1 + logp.abs())).all()


def test_seeded_sampling_reads_strided_seeds(triton_ready) -> None:
    from sglang_domino.kernels.triton_correction import fused_correction_sample_stats

    gen = torch.Generator().manual_seed(600)
    n = 33
    args = [on(triton_ready, t) for t in correction_problem(gen, n, 300, torch.float32)]
    seeds = torch.randint(0, 2**40, (n, 3), generator=gen)
    a = fused_correction_sample_stats(*args, 0.9, seeds=on(triton_ready, seeds)[:, 2], block_v=64)
    b = fused_correction_sample_stats(*args, 0.9, seeds=on(triton_ready, seeds[:, 2].contiguous()), block_v=64)
    assert torch.equal(a.token_ids, b.token_ids) and torch.equal(a.logsumexp, b.logsumexp)


@pytest.mark.parametrize("seed", [0, 1])
def test_w2_tile_row_norm_max_and_strided_norms(triton_ready, seed: int) -> None:
    """Tile norms bound every row norm of their tile (any W2 layout); a strided view of them prunes exactly."""
    from sglang_domino.kernels.triton_correction import fused_correction_argmax, w2_tile_row_norm_max

    gen = torch.Generator().manual_seed(700 + seed)
    vocab, bv = 1000 + 37 * seed, 32
    base, z, h, w1, w2 = correction_problem(gen, 31 + seed, vocab, torch.float32, base_scale=3.0)
    w2 = w2 * (torch.rand(vocab, 1, generator=gen) * 4)  # row norms vary a lot between tiles
    exact = w2.double().norm(dim=1)
    num_tiles = -(-vocab // bv)
    padded = torch.zeros(num_tiles * bv, dtype=torch.float64)
    padded[:vocab] = exact
    expected = padded.view(num_tiles, bv).amax(1)
    for layout in ("packed", "transposed", "col_step"):
        norms = w2_tile_row_norm_max(on(triton_ready, laid_out(w2, layout)), bv).cpu()
        assert norms.shape == (num_tiles,) and norms.dtype == torch.float32
        torch.testing.assert_close(norms.double(), expected, rtol=1e-6, atol=0)
    strided = torch.zeros(num_tiles, 2)  # the norms as column 0 of a [T, 2] buffer: stride 2
    strided[:, 0] = norms
    tok, _ = fused_correction_argmax(*(on(triton_ready, t) for t in (base, z, h, w1, w2)), True,
                                     w2_tile_norms=on(triton_ready, strided)[:, 0], block_v=bv)
    u = hidden64(z, h, w1)
    oracle = base.double() + u @ w2.double().T
    check_tokens(tok, oracle, logit_tol(u, w2, base, torch.float32), "pruned with strided tile norms")


# --------------------------------------------------------------------------------------------------
# The whole loop
# --------------------------------------------------------------------------------------------------


def check_loop(got: torch.Tensor, base, z, bonus, embed, head, pdl: int, dtype: torch.dtype) -> float:
    """Teacher-forced on the kernel's own tokens: slot k's oracle logits use the GRU over [bonus, got[:, :k]].

    Returns the fraction of (row, corrected slot) pairs whose tokens were decisive (1.0 if none corrected)."""
    got = got.cpu()
    n, p, _ = base.shape
    decisive, corrected = 0, 0
    w_ih, w_hh, w1, w2 = head
    for k in range(p):
        logits = base[:, k].double()
        tol = torch.full((n,), 1e-30, dtype=torch.float64)
        if k >= pdl:
            h = torch.zeros(n, w_hh.shape[1], dtype=torch.float64)
            dh = torch.zeros_like(h)
            for tok in [bonus, *got[:, :k].T]:
                h = gru64(embed[tok].double(), h, w_ih, w_hh)
                if dtype == torch.bfloat16:  # the kernel keeps h in bf16: a rounding per step, then propagated
                    dh = 2 * dh + BF16_REL * h.abs()
            u = hidden64(z[:, k], h, w1)
            du = 1.2 * (dh @ w1[:, z.shape[-1]:].double().abs().T)
            logits = logits + u @ w2.double().T
            tol = logit_tol(u, w2, base[:, k], dtype, extra_u=du)
        d = check_tokens(got[:, k], logits, tol, f"slot {k} (pure_draft_prefix_len={pdl})")
        if k >= pdl:
            decisive, corrected = decisive + d, corrected + n
    return decisive / corrected if corrected else 1.0


def loop_problem(gen: torch.Generator, n: int, p: int, vocab: int, dtype: torch.dtype):
    hdim, g, r = randint(gen, 4, 24), randint(gen, 2, 16), randint(gen, 2, 12)
    head = head_weights(gen, hdim, g, r, vocab, dtype)
    embed = torch.randn(vocab, hdim, generator=gen).to(dtype)
    base = torch.randn(n, p, vocab, generator=gen).to(dtype)
    z = torch.randn(n, p, hdim, generator=gen).to(dtype)
    block_ids = torch.randint(0, vocab, (n, p + 1), generator=gen)
    return base, z, block_ids, embed, head


@pytest.mark.parametrize("n", BUCKET_EDGES)
def test_loop_every_pure_draft_prefix_len(triton_ready, n: int) -> None:
    """fp32, every pure_draft_prefix_len 0..P, the anchor tokens as upstream's column view block_ids[:, 0]."""
    from sglang_domino.kernels.cuda_graph import correction_loop_fused
    from sglang_domino.kernels.reference import DominoHeadWeights

    gen = torch.Generator().manual_seed(800 + n)
    p, vocab = 4, 600 + n
    base, z, block_ids, embed, head = loop_problem(gen, n, p, vocab, torch.float32)
    head_d = DominoHeadWeights(*(on(triton_ready, t) for t in head))
    for pdl in range(p + 1):
        got = correction_loop_fused(on(triton_ready, base), on(triton_ready, z), on(triton_ready, block_ids)[:, 0],
                                    on(triton_ready, embed), head_d, pdl, prune=pdl == 1, block_v=256)
        assert got.shape == (n, p) and got.dtype == torch.int64
        assert check_loop(got, base, z, block_ids[:, 0], embed, head, pdl, torch.float32) >= 0.9


@pytest.mark.parametrize("dtype,vocab,n", [(torch.bfloat16, 900, 33), (torch.bfloat16, 49_152, 2)], ids=str)
def test_loop_real_vocab_and_bf16(triton_ready, dtype: torch.dtype, vocab: int, n: int) -> None:
    from sglang_domino.kernels.cuda_graph import correction_loop_fused
    from sglang_domino.kernels.reference import DominoHeadWeights

    gen = torch.Generator().manual_seed(900 + vocab)
    p = 3
    base, z, block_ids, embed, head = loop_problem(gen, n, p, vocab, dtype)
    head_d = DominoHeadWeights(*(on(triton_ready, t) for t in head))
    for pdl in (0, 2):
        got = correction_loop_fused(on(triton_ready, base), on(triton_ready, z), on(triton_ready, block_ids)[:, 0],
                                    on(triton_ready, embed), head_d, pdl, block_v=WIDE_TILE if vocab > 4096 else 64)
        # Most choices must be decisive under the bf16 error bound, or the check has lost its teeth.
        assert check_loop(got, base, z, block_ids[:, 0], embed, head, pdl, dtype) >= 0.5
