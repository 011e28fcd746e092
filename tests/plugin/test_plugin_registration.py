"""Registration through SGLang's public hooks, the contract check, the spec class and the worker's verify path."""

from __future__ import annotations

import os
import subprocess
import sys
from importlib.metadata import entry_points
from types import SimpleNamespace

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("SGLANG_USE_CPU_ENGINE", "1")  # importing sglang without a GPU: CPU engine + shim below

from sglang_domino.plugin import cpu_sgl_kernel  # noqa: E402

cpu_sgl_kernel.install()


def test_entry_point_declared() -> None:
    eps = [ep for ep in entry_points(group="sglang.srt.plugins") if ep.name == "domino"]
    assert len(eps) == 1 and eps[0].value == "sglang_domino.plugin:register"


def test_contract_holds_for_installed_sglang() -> None:
    from sglang_domino.plugin.contract import PINNED_SGLANG_VERSION, check_contract, sglang_version

    assert sglang_version() == PINNED_SGLANG_VERSION
    check_contract()


def test_contract_names_the_missing_upstream_name() -> None:
    from sglang_domino.plugin.contract import ContractError, Requirement, check_contract

    with pytest.raises(ContractError, match=r"sglang\.srt\.speculative\.dflash_worker_v2\.DFlashWorkerV2\.gone"):
        check_contract((Requirement("sglang.srt.speculative.dflash_worker_v2", "DFlashWorkerV2.gone", "test"),))
    with pytest.raises(ContractError, match=r"module sglang\.srt\.nowhere cannot be imported"):
        check_contract((Requirement("sglang.srt.nowhere", "X", "test"),))
    with pytest.raises(ContractError, match="no longer accepts not_a_param"):
        check_contract((Requirement("sglang.srt.speculative.dflash_worker_v2", "DFlashWorkerV2._accept_block", "t",
                                    ("not_a_param",)),))
    with pytest.raises(ContractError, match="no longer reads _not_an_attribute_upstream_reads"):
        check_contract((Requirement("sglang.srt.model_executor.model_runner_components.weight_updater",
                                    "_unsupported_derived_weight_cache_error", "t",
                                    reads=("_not_an_attribute_upstream_reads",)),))


def test_converted_lm_head_makes_sglang_refuse_online_weight_updates() -> None:
    """The message we set is the one SGLang's weight updater answers an update request with."""
    import torch
    from sglang.srt.model_executor.model_runner_components.weight_updater import (
        _unsupported_derived_weight_cache_error,
    )

    from sglang_domino.plugin.worker import refuse_online_weight_updates

    model = torch.nn.Sequential(torch.nn.Embedding(8, 4), torch.nn.Linear(4, 8, bias=False))
    assert _unsupported_derived_weight_cache_error(model) is None
    refuse_online_weight_updates(model[1], torch.bfloat16)
    error = _unsupported_derived_weight_cache_error(model)
    assert "bfloat16 copy of the target's lm_head" in error
    assert "SGLANG_DOMINO_DRAFT_LOGITS_DTYPE=float32" in error


def test_register_makes_domino_resolvable_and_is_idempotent() -> None:
    from sglang.srt.speculative.spec_info import SpeculativeAlgorithm

    from sglang_domino.plugin import register
    from sglang_domino.plugin.spec import DominoSpecAlgo

    register()
    register()
    algo = SpeculativeAlgorithm.from_string("domino")
    assert isinstance(algo, DominoSpecAlgo)
    assert algo.is_dflash() and algo.is_dflash_family() and algo.supports_target_verify_for_draft()
    assert not algo.need_topk() and not algo.carries_draft_hidden_states() and algo.is_speculative()
    from sglang_domino.plugin.worker import DominoWorker

    assert algo.create_worker(SimpleNamespace(disable_overlap_schedule=True)) is DominoWorker


def test_domino_worker_is_a_dflash_worker() -> None:
    from sglang.srt.speculative.dflash_worker_v2 import DFlashWorkerV2

    from sglang_domino.plugin.worker import DominoWorker

    assert issubclass(DominoWorker, DFlashWorkerV2)
    overridden = {"__init__", "_propose_selector_block", "_accept_block", "_maybe_build_draft_sampler",
                  "forward_batch_generation"}
    assert overridden <= set(vars(DominoWorker))


def test_cpu_fast_path_hooks_only_on_the_cpu_engine() -> None:
    """The CPU kernels' hooks are registered in processes of SGLang's CPU engine only, never on GPUs."""
    from sglang_domino.plugin.hooks import CPU_HOOKS, CPU_TP_HOOKS, DOMINO_HOOKS, hooks_for_process

    cpu_targets = {target for target, _ in CPU_HOOKS}
    assert cpu_targets == {"sglang.srt.layers.quantization.unquant.UnquantizedLinearMethod.apply",
                           "sglang.srt.layers.logits_processor.LogitsProcessor._compute_lm_head",
                           "sglang.srt.layers.attention.torch_native_backend.TorchNativeAttnBackend."
                           "_run_sdpa_forward_decode"}
    tp_targets = {target for target, _ in CPU_TP_HOOKS}
    assert {t for t, _ in hooks_for_process(cpu_engine=True)} == cpu_targets | tp_targets | {t for t, _ in DOMINO_HOOKS}
    assert not (cpu_targets | tp_targets) & {t for t, _ in hooks_for_process(cpu_engine=False)}


def test_hooks_target_contract_names() -> None:
    from sglang_domino.plugin.contract import CONTRACT
    from sglang_domino.plugin.hooks import HOOKS

    names = {r.name for r in CONTRACT}
    for target, _ in HOOKS:
        assert target in names, target


def test_plain_server_unaffected_by_plugin_load() -> None:
    """Loading the plugin registers hooks that change nothing outside a DominoWorker / TARGET_VERIFY (the CPU fast
    paths, which do apply to plain servers, give the same results: tests/plugin/test_cpu_fast_paths.py)."""
    from sglang_domino.plugin.hooks import _VerifyAsExtend, building_domino_worker

    assert building_domino_worker.get() is False
    fb = SimpleNamespace(seq_lens=torch.tensor([5, 9]), other="x")
    view = _VerifyAsExtend(fb, 4)
    assert view.seq_lens.tolist() == [9, 13]
    assert view.extend_prefix_lens.tolist() == [5, 9] and view.extend_seq_lens.tolist() == [4, 4]
    assert view.other == "x"


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("kv_heads", [4, 2])
def test_new_token_rows_only_attention_equals_upstream_extend(causal: bool, kv_heads: int) -> None:
    """Hook 7: the speculative extend (new tokens after a cached prefix, requests back to back, paged keys)
    gives upstream torch_native's output, which pads every request's queries to its whole length."""
    from sglang.srt.layers.attention.torch_native_backend import TorchNativeAttnBackend

    from sglang_domino.plugin.attention import sdpa_new_tokens_only

    g = torch.Generator().manual_seed(0)
    heads, dim, pool = 4, 8, 200
    prefix, new = torch.tensor([37, 5, 60]), torch.tensor([4, 4, 1])
    total = prefix + new
    k_cache = torch.randn(pool, kv_heads, dim, generator=g)
    v_cache = torch.randn(pool, kv_heads, dim, generator=g)
    req_to_token = torch.zeros(5, 128, dtype=torch.int64)
    perm = torch.randperm(pool, generator=g)  # paged: each request's tokens scattered over the pool
    used = 0
    for row, n in zip((3, 0, 4), total.tolist()):
        req_to_token[row, :n] = perm[used : used + n]
        used += n
    req_pool_indices = torch.tensor([3, 0, 4])
    query = torch.randn(int(new.sum()), heads, dim, generator=g)
    args = (k_cache, v_cache, req_to_token, req_pool_indices, total, prefix, new)
    expected = TorchNativeAttnBackend._run_sdpa_forward_extend(
        None, query.clone(), torch.zeros_like(query), *args, scaling=0.3, enable_gqa=kv_heads != heads, causal=causal)
    got = sdpa_new_tokens_only(query.clone(), torch.zeros_like(query), *args, scaling=0.3,
                               enable_gqa=kv_heads != heads, causal=causal)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------------- worker verify logic
class RecordingTpSync:
    """Stands in for upstream's ``SpecTpSync`` (a broadcast from TP rank 0): records what would be broadcast."""

    def __init__(self) -> None:
        self.synced: list[tuple[str, list]] = []

    def sync(self, site, values: torch.Tensor) -> torch.Tensor:
        self.synced.append((site.name, values.tolist()))
        return values


def _fake_worker(block_size: int, pending=None):
    return SimpleNamespace(_domino_pending=pending, block_size=block_size, _draft_log_path=None,
                           _tp_sync=RecordingTpSync())


def test_accept_block_greedy_from_logits_and_from_argmax() -> None:
    from sglang_domino.plugin.worker import DominoWorker

    bs, block, vocab = 2, 4, 10
    candidates = torch.tensor([[7, 1, 2, 3], [5, 4, 4, 4]])
    target_top1 = torch.tensor([[1, 2, 9, 6], [4, 8, 0, 0]])
    logits = torch.nn.functional.one_hot(target_top1, vocab).float().view(bs * block, vocab)
    for kwargs in ({"next_token_logits": logits}, {"next_token_logits": None, "target_predict": target_top1.view(-1)}):
        worker = _fake_worker(block)
        accept, commit, bonus, out_tokens, new_seq = DominoWorker._accept_block(
            worker, candidates=candidates, sampling_info=None, draft_input=None,
            prefix_lens=torch.tensor([3, 3]), bs=bs, **kwargs)
        assert accept.tolist() == [2, 1] and commit.tolist() == [3, 2] and bonus.tolist() == [9, 8]
        # under TP every rank commits rank 0's verdict: accept lengths and bonus tokens go through upstream's sync
        assert worker._tp_sync.synced == [("DFLASH_ACCEPT_GREEDY", [2, 1]), ("DFLASH_ACCEPT_GREEDY", [9, 8])]
        assert out_tokens[0, :3].tolist() == [1, 2, 9] and out_tokens[1, :2].tolist() == [4, 8]
        assert new_seq is None


def test_accept_block_sampling_uses_draft_probabilities() -> None:
    """A draft distribution equal to the target's accepts everything (p/q = 1)."""
    from sglang_domino.plugin.worker import DominoWorker
    from sglang_domino.sampling import SamplingParams, filtered_probs

    torch.manual_seed(0)
    bs, block, vocab = 3, 5, 16
    logits = torch.randn(bs, block, vocab)
    params = SamplingParams.uniform(bs, temperature=1.0)
    q = filtered_probs(logits[:, :-1].reshape(-1, vocab), params.repeat_interleave(block - 1)).view(bs, block - 1, vocab)
    drafts = torch.multinomial(q.view(-1, vocab), 1).view(bs, block - 1)
    candidates = torch.cat((torch.zeros(bs, 1, dtype=torch.long), drafts), dim=1)
    worker = _fake_worker(block, (q, params, None))
    accept, commit, bonus, out_tokens, _ = DominoWorker._accept_block(
        worker, candidates=candidates, next_token_logits=logits.view(-1, vocab),
        sampling_info=None, draft_input=None, prefix_lens=torch.zeros(bs, dtype=torch.long), bs=bs)
    assert accept.tolist() == [block - 1] * bs and commit.tolist() == [block] * bs
    # sampled verdicts depend on each rank's random state: rank 0's is broadcast (upstream's sample site)
    assert [site for site, _ in worker._tp_sync.synced] == ["DFLASH_ACCEPT_SAMPLE"] * 2


def test_sampling_params_from_sglang_batch() -> None:
    from sglang_domino.plugin.worker import sampling_params_from_batch

    info = SimpleNamespace(is_all_greedy=False, need_min_p_sampling=False,
                           temperatures=torch.tensor([[1.0], [0.7]]), top_ks=torch.tensor([1, 1 << 30], dtype=torch.int32),
                           top_ps=torch.tensor([1.0, 0.9]), min_ps=torch.zeros(2))
    params = sampling_params_from_batch(info, 2)
    assert params.top_k.dtype == torch.int64 and params.min_p is None
    assert params.temperature.tolist() == pytest.approx([1.0, 0.7])
    assert sampling_params_from_batch(SimpleNamespace(is_all_greedy=True), 2) is None
    assert sampling_params_from_batch(None, 2) is None
