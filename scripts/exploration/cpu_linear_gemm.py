"""Float32 linear cost on CPU for SmolLM2-135M's shapes: F.linear vs the paths of sglang_domino.kernels.cpu_linear.

small  = (W @ xᵀ)ᵀ (small_batch_linear); packed = oneDNN with the weight packed once (packed_linear).
30 layers' qkv/o/gate_up/down weights + the lm_head (540 MB, so not cache-resident), 2 threads, min over 3 runs.
    python scripts/exploration/cpu_linear_gemm.py > scripts/exploration/cpu_linear_gemm.txt
"""
import time
from types import SimpleNamespace

import torch
import torch.nn.functional as F

from sglang_domino.kernels.cpu_linear import packed_linear, small_batch_linear

torch.set_num_threads(2)
torch.manual_seed(0)
SHAPES = [(960, 576), (576, 576), (3072, 576), (576, 1536)]
WEIGHTS = [torch.randn(o, i) for _ in range(30) for (o, i) in SHAPES] + [torch.randn(49152, 576)]  # + lm_head
MODULES = [SimpleNamespace() for _ in WEIGHTS]  # where packed_linear keeps each packed weight
PATHS = {
    "F.linear": lambda x, w, m: F.linear(x, w),
    "small": lambda x, w, m: small_batch_linear(x, w),
    "packed": lambda x, w, m: packed_linear(m, x, w),
}


def forward(rows: int, linear) -> None:
    xs = {576: torch.randn(rows, 576), 1536: torch.randn(rows, 1536)}
    for w, m in zip(WEIGHTS, MODULES):
        linear(xs[w.shape[1]], w, m)


print("rows | F.linear ms | small ms | packed ms | F.linear / packed")
for rows in (1, 2, 3, 4, 8, 16, 32, 64, 256, 512):
    best = {name: float("inf") for name in PATHS}
    for _ in range(3):
        for name, fn in PATHS.items():  # interleaved, so drift hits every path alike
            forward(rows, fn)
            t = time.perf_counter()
            for _ in range(3):
                forward(rows, fn)
            best[name] = min(best[name], (time.perf_counter() - t) / 3 * 1e3)
    print(f"{rows} | {best['F.linear']:.1f} | {best['small']:.1f} | {best['packed']:.1f} | "
          f"{best['F.linear'] / best['packed']:.2f}x", flush=True)
