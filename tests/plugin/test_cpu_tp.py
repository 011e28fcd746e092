"""CPU tensor parallelism hooks (sglang_domino.plugin.cpu_tp): the core split, the default binding, the binding
applied where upstream only warns, and gloo groups without PyNccl. The served check is
tests/server/test_tensor_parallel.py."""

from __future__ import annotations

import inspect
import os

import pytest

from sglang_domino.plugin import cpu_tp
from sglang_domino.plugin.cpu_tp import (THREADS_BIND_ENV, format_cpu_list, parse_cpu_list, physical_cores_by_node,
                                         threads_bind)


def test_cpu_lists_round_trip() -> None:
    assert parse_cpu_list("0-3,8,10-11") == [0, 1, 2, 3, 8, 10, 11]
    assert parse_cpu_list("5") == [5]
    assert format_cpu_list([3, 0, 1, 2, 8, 10, 11]) == "0-3,8,10-11"
    assert format_cpu_list([1]) == "1"
    with pytest.raises(ValueError):
        parse_cpu_list("3-1")


LSCPU = """# The following is the parsable format
# CPU,Core,Socket,Node
0,0,0,0
1,1,0,0
2,2,0,1
3,3,0,1
4,0,0,0
5,1,0,0
6,2,0,1
7,3,0,1
"""


def test_physical_cores_grouped_by_node(monkeypatch) -> None:
    """One CPU per physical core (hyperthread siblings 4-7 dropped), by NUMA node, only CPUs this process may use."""
    monkeypatch.setattr(cpu_tp, "_allowed_cpus", lambda: set(range(8)))
    assert physical_cores_by_node(LSCPU) == [[0, 1], [2, 3]]
    monkeypatch.setattr(cpu_tp, "_allowed_cpus", lambda: {1, 2, 3, 5})
    assert physical_cores_by_node(LSCPU) == [[1], [2, 3]]
    assert physical_cores_by_node("") == [[1, 2, 3, 5]]  # no topology: every allowed CPU, one node


def test_threads_bind_splits_cores_evenly() -> None:
    assert threads_bind(2, [[0, 1]]) == "0|1"
    assert threads_bind(2, [[0, 1, 2, 3], [4, 5, 6, 7]]) == "0-3|4-7"
    assert threads_bind(3, [list(range(8))]) == "0-2|3-5|6-7"
    assert threads_bind(1, [[0, 1]]) == "0-1"
    with pytest.raises(ValueError, match="3 CPU ranks need one physical core each"):
        threads_bind(3, [[0, 1]])


def test_threads_bind_of_this_machine() -> None:
    cores = sum(len(node) for node in physical_cores_by_node())
    bind = threads_bind(cores)
    assert len(bind.split("|")) == cores and all(len(parse_cpu_list(g)) == 1 for g in bind.split("|"))


# --- hook a: init_threads_binding -----------------------------------------------------------------------------
@pytest.fixture
def one_numa_node(monkeypatch):
    from sglang.srt.utils import numa_utils

    monkeypatch.setattr(numa_utils, "get_cpu_ids_by_node", lambda: ["0,1"])
    monkeypatch.delenv(THREADS_BIND_ENV, raising=False)
    return numa_utils


def test_default_binding_when_ranks_exceed_numa_nodes(one_numa_node) -> None:
    """Upstream asserts ranks <= NUMA nodes without the variable; the hook binds one even share per rank instead,
    for that call only, and upstream's own function picks this rank's share."""
    original = one_numa_node.init_threads_binding
    with pytest.raises(AssertionError):
        original(numa_index=1, world_size=2)
    assert cpu_tp._init_threads_binding(original, numa_index=0, world_size=2) == "0"
    assert cpu_tp._init_threads_binding(original, numa_index=1, world_size=2) == "1"
    assert THREADS_BIND_ENV not in os.environ


def test_binding_left_to_upstream_otherwise(one_numa_node, monkeypatch) -> None:
    seen = []

    def original(*, numa_index, world_size):
        seen.append(os.environ.get(THREADS_BIND_ENV))
        return "upstream"

    assert cpu_tp._init_threads_binding(original, numa_index=0, world_size=1) == "upstream"  # fits the NUMA nodes
    monkeypatch.setenv(THREADS_BIND_ENV, "1|0")  # the user's choice
    assert cpu_tp._init_threads_binding(original, numa_index=0, world_size=2) == "upstream"
    assert seen == [None, "1|0"]


# --- hook b: _init_cpu_threads_env ----------------------------------------------------------------------------
@pytest.fixture
def binding(monkeypatch):
    bound = []
    monkeypatch.setattr(cpu_tp, "bind_this_process", lambda cpus: bound.append(list(cpus)))
    monkeypatch.setattr(cpu_tp, "_native_binding_available", lambda: False)
    monkeypatch.setattr(cpu_tp, "_world_size", lambda: 2)
    return bound


def _upstream(calls):
    def original(*, local_omp_cpuid, dist_init_method=None):
        calls.append(local_omp_cpuid)
    return original


def test_rank_bound_where_upstream_only_warns(binding) -> None:
    calls = []
    cpu_tp._init_cpu_threads_env(_upstream(calls), local_omp_cpuid="2-3", dist_init_method="tcp://x:1")
    assert binding == [[2, 3]] and calls == []


def test_one_rank_or_native_binding_is_upstreams(binding, monkeypatch) -> None:
    calls = []
    monkeypatch.setattr(cpu_tp, "_world_size", lambda: 1)
    cpu_tp._init_cpu_threads_env(_upstream(calls), local_omp_cpuid="0-1")
    monkeypatch.setattr(cpu_tp, "_world_size", lambda: 2)
    monkeypatch.setattr(cpu_tp, "_native_binding_available", lambda: True)
    cpu_tp._init_cpu_threads_env(_upstream(calls), local_omp_cpuid="1")
    assert binding == [] and calls == ["0-1", "1"]


def test_native_binding_needs_amx_or_arm64_and_the_op(monkeypatch) -> None:
    from sglang.srt.distributed import bootstrap

    monkeypatch.setattr(bootstrap, "_is_cpu_amx_available", False)
    monkeypatch.setattr(bootstrap, "_is_cpu_arm64", False)
    assert not cpu_tp._native_binding_available()
    monkeypatch.setattr(bootstrap, "_is_cpu_amx_available", True)
    import torch

    assert cpu_tp._native_binding_available() == hasattr(torch.ops.sgl_kernel, "init_cpu_threads_env")


def test_bind_this_process_sets_affinity_and_threads() -> None:
    import torch

    before_cpus, before_threads = os.sched_getaffinity(0), torch.get_num_threads()
    one = min(before_cpus)
    try:
        cpu_tp.bind_this_process([one])
        assert os.sched_getaffinity(0) == {one} and torch.get_num_threads() == 1
    finally:
        os.sched_setaffinity(0, before_cpus)
        torch.set_num_threads(before_threads)


# --- hook c: init_model_parallel_group ------------------------------------------------------------------------
def test_gloo_groups_get_no_pynccl() -> None:
    from sglang.srt.distributed import parallel_state

    calls = []
    params = inspect.signature(parallel_state.init_model_parallel_group)

    def original(*args, **kwargs):
        calls.append(params.bind(*args, **kwargs).arguments)

    original.__signature__ = params
    cpu_tp._init_model_parallel_group(original, [[0, 1]], 0, "gloo", group_name="tp")
    cpu_tp._init_model_parallel_group(original, [[0, 1]], 0, backend="gloo", use_pynccl=True, group_name="attn_tp")
    cpu_tp._init_model_parallel_group(original, [[0, 1]], 0, "nccl", group_name="tp")
    assert [c.get("use_pynccl") for c in calls] == [False, False, None]
    assert [c.get("use_custom_allreduce") for c in calls] == [False, False, None]
    assert calls[0]["group_name"] == "tp" and calls[1]["backend"] == "gloo"


def test_cpu_tp_hooks_only_on_the_cpu_engine_and_in_the_contract() -> None:
    from sglang_domino.plugin.contract import CONTRACT, check_contract
    from sglang_domino.plugin.hooks import CPU_TP_HOOKS, hooks_for_process

    targets = {t for t, _ in CPU_TP_HOOKS}
    assert targets == {"sglang.srt.utils.numa_utils.init_threads_binding",
                       "sglang.srt.distributed.bootstrap._init_cpu_threads_env",
                       "sglang.srt.distributed.parallel_state.init_model_parallel_group"}
    assert targets <= {t for t, _ in hooks_for_process(cpu_engine=True)}
    assert not targets & {t for t, _ in hooks_for_process(cpu_engine=False)}
    assert targets <= {r.name for r in CONTRACT}
    check_contract(tuple(r for r in CONTRACT if r.module.startswith(("sglang.srt.distributed", "sglang.srt.utils.numa"))))
