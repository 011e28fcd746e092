"""Float32 linear cost on CPU for SmolLM2-135M's shapes: F.linear vs (W @ xᵀ)ᵀ (sglang_domino.plugin.cpu_fast_paths).

30 layers' qkv/o/gate_up/down weights + the lm_head (540 MB, so not cache-resident), 2 threads, min over 3 runs.
    python benchmarks/results/exploration/cpu_linear_gemm.py > benchmarks/results/exploration/cpu_linear_gemm.txt
"""
import time

import torch
import torch.nn.functional as F

from sglang_domino.plugin.cpu_fast_paths import small_batch_linear

torch.set_num_threads(2)
torch.manual_seed(0)
SHAPES = [(960, 576), (576, 576), (3072, 576), (576, 1536)]
LAYERS = [[torch.randn(o, i) for (o, i) in SHAPES] for _ in range(30)]
LM_HEAD = torch.randn(49152, 576)


def forward(rows: int, linear) -> None:
    x, x_wide = torch.randn(rows, 576), torch.randn(rows, 1536)
    for weights in LAYERS:
        for w in weights:
            linear(x_wide if w.shape[1] == 1536 else x, w)
    linear(x, LM_HEAD)


print("rows | F.linear ms | small_batch_linear ms | ratio")
for rows in (1, 2, 4, 8, 16, 64, 256):
    best = {}
    for name, fn in (("F.linear", F.linear), ("small_batch_linear", small_batch_linear)):
        runs = []
        for _ in range(3):
            forward(rows, fn)
            t = time.perf_counter()
            for _ in range(5):
                forward(rows, fn)
            runs.append((time.perf_counter() - t) / 5 * 1e3)
        best[name] = min(runs)
    print(f"{rows} | {best['F.linear']:.1f} | {best['small_batch_linear']:.1f} | "
          f"{best['F.linear'] / best['small_batch_linear']:.2f}x", flush=True)
