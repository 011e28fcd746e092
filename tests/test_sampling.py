"""sglang_domino/sampling.py: the filtered distribution in bounded memory and without host synchronisation.

(Its semantics against SGLang's own sampler: tests/test_verify.py.)"""

from __future__ import annotations

import pytest
import torch

from sglang_domino.sampling import SamplingParams, _filtered_probs, filtered_probs


def _mixed_params(n: int, seed: int) -> SamplingParams:
    g = torch.Generator().manual_seed(seed)
    params = SamplingParams(temperature=torch.rand(n, generator=g) + 0.1,
                            top_k=torch.randint(-1, 40, (n,), generator=g),
                            top_p=torch.rand(n, generator=g), min_p=torch.rand(n, generator=g) * 0.2)
    params.temperature[::4] = 0.0  # greedy rows among them
    return params


@pytest.mark.parametrize("chunk_rows", [1, 3, 7, 64])
def test_chunked_filtering_equals_one_pass(chunk_rows: int) -> None:
    """Rows are filtered in chunks (bounded temporaries) with bit-identical results, greedy rows included."""
    n, vocab = 37, 500
    logits = torch.randn(n, vocab, generator=torch.Generator().manual_seed(1)) * 3
    logits[5, :10] = logits[5].max() + 1.0  # a tie at the top: the lowest id wins for a greedy row
    params = _mixed_params(n, seed=2)
    params.temperature[5] = 0.0
    whole = _filtered_probs(logits, params)
    chunked = filtered_probs(logits, params, chunk_elements=chunk_rows * vocab)
    assert torch.equal(chunked, whole)
    assert torch.allclose(whole.sum(-1), torch.ones(n))
    assert whole[5, 0] == 1.0 and whole[5].sum() == 1.0


def test_chunking_bounds_the_sort(monkeypatch) -> None:
    """No call sorts more than the chunk: the filter of 48 x 16 rows is done piecewise."""
    sizes: list[int] = []
    real_sort = torch.Tensor.sort

    def recording_sort(self, *args, **kwargs):
        sizes.append(self.numel())
        return real_sort(self, *args, **kwargs)

    monkeypatch.setattr(torch.Tensor, "sort", recording_sort)
    n, vocab = 48 * 16, 1000
    filtered_probs(torch.randn(n, vocab), SamplingParams.uniform(n, temperature=0.7, top_p=0.9),
                   chunk_elements=100 * vocab)
    assert sizes and max(sizes) <= 100 * vocab and sum(sizes) == n * vocab


def test_no_host_synchronisation_for_greedy_rows(monkeypatch) -> None:
    """The filter never converts a tensor to a Python bool (a device-to-host sync on GPUs)."""
    def refuse(self):
        raise AssertionError("host synchronisation: Tensor.__bool__ called")

    monkeypatch.setattr(torch.Tensor, "__bool__", refuse)
    out = filtered_probs(torch.randn(6, 50), _mixed_params(6, seed=3))
    assert out.shape == (6, 50)
