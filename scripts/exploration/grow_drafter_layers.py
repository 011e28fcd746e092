"""Grow a published-format drafter by appending decoder layers that start as the identity (exploration).

The new layers are initialised like the others (N(0, 0.02), norms 1) except ``o_proj`` and ``down_proj``, which
start at zero, so both residual branches add nothing: the grown drafter drafts exactly what the source drafted
until training moves them. Used to ask whether depth is what limits the embedded drafter (2026-12-06):

    python scripts/exploration/grow_drafter_layers.py sglang_domino/embedded/drafter runs/grow3/init 3
    sglang-domino train ... --init-from runs/grow3/init ...
"""
import dataclasses
import sys

import torch

from sglang_domino.checkpoint import load_drafter, save_drafter
from sglang_domino.modeling import DominoDrafter


def grow(src: str, dst: str, num_layers: int) -> None:
    old = load_drafter(src, dtype=torch.float32)
    if num_layers <= old.config.num_hidden_layers:
        raise SystemExit(f"{src} already has {old.config.num_hidden_layers} layers; asked for {num_layers}")
    torch.manual_seed(0)
    new = DominoDrafter(dataclasses.replace(old.config, num_hidden_layers=num_layers))
    missing, unexpected = new.load_state_dict(old.state_dict(), strict=False)
    assert not unexpected and all(k.startswith("layers.") for k in missing), (missing, unexpected)
    with torch.no_grad():
        for layer in new.layers[old.config.num_hidden_layers:]:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
    save_drafter(new, dst, dtype=torch.bfloat16)
    print(f"{dst}: {num_layers} layers ({len(missing)} new tensors), "
          f"{sum(p.numel() for p in new.parameters()) / 1e6:.2f} M params")


if __name__ == "__main__":
    grow(sys.argv[1], sys.argv[2], int(sys.argv[3]))
