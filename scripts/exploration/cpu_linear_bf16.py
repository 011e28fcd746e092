"""bf16 linears on CPU: F.linear against oneDNN with a weight packed ahead of time (kernels/cpu_linear.py).

SmolLM2-135M's shapes (30 layers' own qkv [960, 576], o [576, 576], gate_up [3072, 576], down [576, 1536] and the
[49152, 576] head: 270 MB, so not cache-resident), 2 threads, ms per forward; then the head alone for the few rows drafting multiplies, and
whether the packed product equals F.linear's bit for bit. Output: cpu_linear_bf16.txt (run on the machine named
there).

    python scripts/exploration/cpu_linear_bf16.py > scripts/exploration/cpu_linear_bf16.txt
"""

from __future__ import annotations

import platform
import time

import torch
import torch.nn.functional as F

LAYER_SHAPES = [(960, 576), (576, 576), (3072, 576), (576, 1536)]
HEAD = (49152, 576)


def ms_per_call(fn, repeats: int = 30) -> float:
    fn(), fn()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats * 1000


def main() -> None:
    torch.set_num_threads(2)
    flags = open("/proc/cpuinfo").read()
    print(f"torch {torch.__version__}, {platform.processor() or platform.machine()}, 2 threads, "
          f"avx512_bf16={'avx512_bf16' in flags}, amx_bf16={'amx_bf16' in flags}")
    g = torch.Generator().manual_seed(0)
    weights = [torch.randn(*shape, generator=g).bfloat16() for _ in range(30) for shape in LAYER_SHAPES]
    weights.append(torch.randn(*HEAD, generator=g).bfloat16())
    packed = [torch.ops.mkldnn._reorder_linear_weight(w, 32) for w in weights]
    print("rows | F.linear ms/forward | packed ms/forward | equal")
    for rows in (1, 2, 3, 4, 8, 16, 48):
        xs = {576: torch.randn(rows, 576, generator=g).bfloat16(), 1536: torch.randn(rows, 1536, generator=g).bfloat16()}
        f_ms = ms_per_call(lambda: [F.linear(xs[w.shape[1]], w) for w in weights], repeats=10)
        p_ms = ms_per_call(lambda: [torch.ops.mkldnn._linear_pointwise(xs[w.shape[1]], p, None, "none", [], "")
                                    for w, p in zip(weights, packed)], repeats=10)
        equal = all(torch.equal(F.linear(xs[w.shape[1]], w),
                                torch.ops.mkldnn._linear_pointwise(xs[w.shape[1]], p, None, "none", [], ""))
                    for w, p in zip(weights, packed))
        print(f"{rows} | {f_ms:.1f} | {p_ms:.1f} | {equal}")
    print("head [49152, 576] alone: rows | F.linear ms | packed ms")
    for rows in (1, 2, 3, 6):
        x = torch.randn(rows, HEAD[1], generator=g).bfloat16()
        print(f"{rows} | {ms_per_call(lambda: F.linear(x, weights[-1])):.2f} | "
              f"{ms_per_call(lambda: torch.ops.mkldnn._linear_pointwise(x, packed[-1], None, 'none', [], '')):.2f}")


if __name__ == "__main__":
    main()
