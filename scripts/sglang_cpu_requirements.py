"""Regenerate requirements/sglang-cpu.txt from the sglang wheel's own Requires-Dist list.

Usage: python scripts/sglang_cpu_requirements.py path/to/sglang-0.5.23-*.whl
(get the wheel with `pip download --no-deps sglang==0.5.23`). Drops extras-only requirements, the
CUDA-only packages that cannot run or install usefully on a CPU machine (SGLang's CPU engine needs none of them), and
torch/torchvision, which the Makefile installs first at sglang's pin.
"""

from __future__ import annotations

import re
import sys
import zipfile
from pathlib import Path

CUDA_ONLY = {
    "sglang-kernel", "flashinfer-python", "flash-attn-4", "nvidia-cutlass-dsl", "nvidia-mathdx", "nvshmem4py-cu13",
    "cuda-python", "sgl-deep-ep", "sgl-deep-gemm", "sgl-flash-mla", "tilelang", "quack-kernels", "humming-kernels",
    "torch-memory-saver", "torchaudio", "torchcodec", "torch", "torchvision",
}


def main(wheel: str) -> None:
    with zipfile.ZipFile(wheel) as zf:
        metadata = next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA"))
        lines = zf.read(metadata).decode().splitlines()
    keep = []
    for line in lines:
        if not line.startswith("Requires-Dist:"):
            continue
        req = line.split(":", 1)[1].strip()
        name = re.split(r"[\[<>=;! ]", req)[0].lower().replace("_", "-")
        if "extra ==" in req or name in CUDA_ONLY:
            continue
        keep.append(req)
    out = Path(__file__).resolve().parents[1] / "requirements" / "sglang-cpu.txt"
    header = ("# sglang==0.5.23's own Requires-Dist (wheel METADATA) minus CUDA-only packages and torch/torchvision,\n"
              "# which the Makefile installs first. Regenerate with scripts/sglang_cpu_requirements.py.\n")
    out.write_text(header + "\n".join(keep) + "\n")
    print(f"{out}: {len(keep)} requirements")


if __name__ == "__main__":
    main(sys.argv[1])
