"""sglang_domino/plugin/attention.py and its two users: rows converted once per forward, never stale."""

from __future__ import annotations

from types import SimpleNamespace

import torch

from sglang_domino.plugin.attention import PerForwardRows, decode_rows, extend_rows


def test_rows_are_built_once_per_forward_and_rebuilt_when_the_lengths_change() -> None:
    seq_lens, prefix, new, pool = torch.tensor([9, 13]), torch.tensor([5, 0]), torch.tensor([4, 13]), torch.tensor([3, 1])
    cache, builds = PerForwardRows(), []

    def build():
        builds.append(1)
        return extend_rows(seq_lens, prefix, new, pool)

    tensors = (seq_lens, prefix, new, pool)
    for _ in range(30):  # the layers of one forward
        rows, any_prefix = cache.get(tensors, build)
    assert len(builds) == 1 and rows == [(4, 9, 5, 3), (13, 13, 0, 1)] and any_prefix
    prefix.zero_()  # a buffer reused in place (the next step): its version counter moved
    seq_lens.copy_(new)
    rows, any_prefix = cache.get(tensors, build)
    assert len(builds) == 2 and rows == [(4, 4, 0, 3), (13, 13, 0, 1)] and not any_prefix
    other = torch.tensor([9, 13])  # equal values, another tensor: rebuilt (no value comparison needed)
    cache.get((other, prefix, new, pool), lambda: extend_rows(other, prefix, new, pool))
    assert cache.get((other, prefix, new, pool), build)[0] == [(4, 9, 0, 3), (13, 13, 0, 1)] and len(builds) == 2
    assert decode_rows(torch.tensor([17, 1]), torch.tensor([2, 0])) == [(1, 17, 16, 2), (1, 1, 0, 0)]


def test_verify_view_is_reused_across_layers_and_remade_for_a_new_step() -> None:
    """Hook 4 hands every layer of one verify forward the same extend view (same length tensors, so their rows are
    converted once); a new batch, or lengths written in place, get a new view."""
    from sglang.srt.model_executor.forward_batch_info import ForwardMode

    from sglang_domino.plugin import hooks

    seen = []

    def original(self, q, k, v, layer, forward_batch, *args, **kwargs):
        seen.append(forward_batch)
        return forward_batch

    def batch(lengths):
        return SimpleNamespace(forward_mode=ForwardMode.TARGET_VERIFY, extend_prefix_lens=None,
                               spec_info=SimpleNamespace(draft_token_num=4), seq_lens=torch.tensor(lengths))

    fb = batch([5, 9])
    views = [hooks._torch_native_forward_extend(original, None, None, None, None, layer, fb) for layer in range(3)]
    assert views[0] is views[1] is views[2] and views[0].seq_lens.tolist() == [9, 13]
    fb.seq_lens.add_(1)  # in place: the old view would be stale
    again = hooks._torch_native_forward_extend(original, None, None, None, None, 0, fb)
    assert again is not views[0] and again.seq_lens.tolist() == [10, 14]
    assert again.extend_prefix_lens.tolist() == [6, 10] and again.extend_seq_lens.tolist() == [4, 4]
    other = batch([6, 10])
    assert hooks._torch_native_forward_extend(original, None, None, None, None, 0, other)._fb is other
    extend = SimpleNamespace(forward_mode=ForwardMode.EXTEND, extend_prefix_lens=torch.tensor([0]), spec_info=None)
    assert hooks._torch_native_forward_extend(original, None, None, None, None, 0, extend) is extend
