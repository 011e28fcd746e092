"""What this machine's CPU can do, where it changes a default (serving dtype, drafting precision)."""

from __future__ import annotations

from pathlib import Path


def cpu_has_bf16_units(cpuinfo: str = "/proc/cpuinfo") -> bool:
    """Whether this CPU multiplies bf16 natively (AVX512-BF16 or AMX-BF16)."""
    try:
        flags = Path(cpuinfo).read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


__all__ = ["cpu_has_bf16_units"]
