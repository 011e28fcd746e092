"""Compile every Triton kernel of sglang_domino.kernels for an H100 (sm_90) without a GPU.

Triton's NVIDIA backend (bundled ptxas) lowers TTIR -> TTGIR -> LLVM -> PTX -> cubin on any machine;
only launching needs a device. This catches what the CPU interpreter cannot: type rules of compiled
Triton, layout passes, register allocation. It does not check results or speed.

Run in its own process (``python compile_sm90.py``): the kernels must be decorated in compiler mode,
i.e. with TRITON_INTERPRET unset before ``import triton``. Prints one line per kernel variant, then
"ALL OK"; exits non-zero on the first failure.
"""

from __future__ import annotations

import os
import sys

os.environ.pop("TRITON_INTERPRET", None)

import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

from sglang_domino.kernels import triton_correction as C  # noqa: E402
from sglang_domino.kernels import triton_gru as G  # noqa: E402

TARGET = GPUTarget("cuda", 90, 32)
EPS = dict(REL_EPS=C._PRUNE_REL_EPS, ABS_EPS=C._PRUNE_ABS_EPS)


def compile_variant(fn, types: dict, consts: dict) -> None:
    # Pointers as given, every other runtime argument a 32-bit int (sizes and strides).
    signature = {name: "constexpr" if name in consts else types.get(name, "i32") for name in fn.arg_names}
    triton.compile(ASTSource(fn, signature, consts), target=TARGET)
    print(f"ok  {fn.__name__} {consts}", flush=True)


def main() -> int:
    # The variants real launches pick: bf16 on tensor cores (UPCAST=False) and fp32 (UPCAST=True).
    # (Mixed dtypes also take UPCAST=True; that code is the fp32 variant's with bf16 loads.)
    for dt, upcasts in (("bf16", (False,)), ("fp32", (True,))):
        p = f"*{dt}"
        for upcast in upcasts:
            for gather in (True, False):
                compile_variant(G._gru_cell_kernel, dict(x_ptr=p, tok_ptr="*i64", h_ptr=p, wih_ptr=p, whh_ptr=p, out_ptr=p),
                                dict(GATHER=gather, UPCAST=upcast, BLOCK_N=32, BLOCK_G=16, BLOCK_K=128))
            compile_variant(C._w1_silu_kernel, dict(z_ptr=p, h_ptr=p, w1_ptr=p, u_ptr="*fp32"),
                            dict(UPCAST=upcast, ROUND_U=1 if dt == "bf16" else 0, BLOCK_N=32, BLOCK_R=32, BLOCK_K=128))
            for prune in (False, True):
                compile_variant(
                    C._w2_tile_argmax_kernel,
                    dict(base_ptr=p, u_ptr="*fp32", w2_ptr=p, tmax_ptr="*fp32", targ_ptr="*i64", btm_ptr="*fp32",
                         tnorm_ptr="*fp32", lower_ptr="*fp32", unorm_ptr="*fp32"),
                    dict(PRUNE=prune, UPCAST=upcast, BLOCK_N=32, BLOCK_V=64, BLOCK_K=64, **EPS))
            for noise in (False, True):
                compile_variant(
                    C._w2_tile_sample_kernel,
                    dict(base_ptr=p, u_ptr="*fp32", w2_ptr=p, inv_t_ptr="*fp32", seed_ptr="*i64", noise_ptr="*fp32",
                         tm_ptr="*fp32", ts_ptr="*fp32", tkey_ptr="*fp32", targ_ptr="*i64", tlog_ptr="*fp32"),
                    dict(NOISE=noise, UPCAST=upcast, BLOCK_N=32, BLOCK_V=64, BLOCK_K=64))
        compile_variant(C._base_tile_max_kernel, dict(base_ptr=p, out_ptr="*fp32"), dict(BLOCK_N=32, BLOCK_V=64))
        compile_variant(
            C._lower_bound_kernel,
            dict(base_ptr=p, u_ptr="*fp32", w2_ptr=p, btm_ptr="*fp32", tnorm_ptr="*fp32", lower_ptr="*fp32",
                 unorm_ptr="*fp32"),
            dict(BLOCK_T=1024, BLOCK_V=64, BLOCK_K=64, **EPS))
    compile_variant(C._reduce_argmax_kernel, dict(tmax_ptr="*fp32", targ_ptr="*i64", tok_ptr="*i64", val_ptr="*fp32"),
                    dict(BLOCK_R=4, BLOCK_T=1024))
    compile_variant(
        C._reduce_sample_kernel,
        dict(tm_ptr="*fp32", ts_ptr="*fp32", tkey_ptr="*fp32", targ_ptr="*i64", tlog_ptr="*fp32", tok_ptr="*i64",
             logp_ptr="*fp32", lse_ptr="*fp32"),
        dict(BLOCK_R=4, BLOCK_T=1024))
    print("ALL OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
