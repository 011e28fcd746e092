"""Tensor parallelism on SGLang's CPU engine (``--tp-size N`` with ``SGLANG_USE_CPU_ENGINE=1``), plain or Domino.

Plain SGLang 0.5.23 cannot start a CPU TP group on a machine like ours, and once started it oversubscribes the
cores. Three AROUND hooks (registered only on the CPU engine, :data:`sglang_domino.plugin.hooks.CPU_TP_HOOKS`):

a. ``numa_utils.init_threads_binding``: without ``SGLANG_CPU_OMP_THREADS_BIND`` upstream gives each rank one NUMA
    node and asserts ranks <= NUMA nodes (one node here: TP=2 dies). When that assertion would fire, the hook binds
    with an even split of the physical cores instead (:func:`threads_bind`, ``"0|1"`` for two ranks on two cores),
    as if the variable were set, and upstream's function does the rest. A variable the user set is left alone.
b. ``bootstrap._init_cpu_threads_env``: upstream applies the binding only through sgl-kernel's
    ``init_cpu_threads_env`` on AMX or arm64 CPUs; elsewhere (and with our sgl-kernel shim, which has no such op)
    it only warns, so every rank runs as many OpenMP threads as the machine has cores, all on the same cores. With
    more than one rank, the hook binds this rank's process to its cores (``os.sched_setaffinity``) and sets
    ``torch.set_num_threads`` to their number. One rank, or a real sgl-kernel on AMX/arm64: upstream's.
c. ``parallel_state.init_model_parallel_group``: upstream builds a PyNccl communicator for every group whose
    backend is not npu/xpu/mooncake, gloo included; PyNccl then asks for a CUDA device. For gloo groups the hook
    passes ``use_pynccl=False`` (and no custom all-reduce, a CUDA-IPC kernel), so ``GroupCoordinator.all_reduce``
    takes its CPU branch: ``torch.distributed.all_reduce`` on gloo (sgl-kernel's shared-memory all-reduce needs
    AMX or arm64 plus a real sgl-kernel).

The hooks change nothing at TP=1 and nothing for non-gloo groups. :func:`threads_bind` is also what
``sglang-domino serve`` puts in ``SGLANG_CPU_OMP_THREADS_BIND`` for ``--tp-size > 1`` when the user did not set it.
"""

from __future__ import annotations

import inspect
import logging
import os
import subprocess
from typing import Any, Optional, Sequence

logger = logging.getLogger(__name__)

THREADS_BIND_ENV = "SGLANG_CPU_OMP_THREADS_BIND"


# --- cores ------------------------------------------------------------------------------------------------------
def parse_cpu_list(text: str) -> list[int]:
    """``"0-3,8,10-11"`` -> ``[0, 1, 2, 3, 8, 10, 11]`` (the format of a ``SGLANG_CPU_OMP_THREADS_BIND`` entry)."""
    cpus: list[int] = []
    for part in str(text).replace(" ", "").split(","):
        if not part:
            continue
        first, sep, last = part.partition("-")
        if sep:
            if int(last) < int(first):
                raise ValueError(f"bad CPU range {part!r}")
            cpus.extend(range(int(first), int(last) + 1))
        else:
            cpus.append(int(first))
    return cpus


def format_cpu_list(cpus: Sequence[int]) -> str:
    """``[0, 1, 2, 3, 8]`` -> ``"0-3,8"``."""
    parts: list[str] = []
    ordered = sorted(set(int(c) for c in cpus))
    i = 0
    while i < len(ordered):
        j = i
        while j + 1 < len(ordered) and ordered[j + 1] == ordered[j] + 1:
            j += 1
        parts.append(str(ordered[i]) if i == j else f"{ordered[i]}-{ordered[j]}")
        i = j + 1
    return ",".join(parts)


def _allowed_cpus() -> set[int]:
    try:
        return set(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return set(range(os.cpu_count() or 1))


def physical_cores_by_node(lscpu_output: Optional[str] = None) -> list[list[int]]:
    """The CPUs this process may use, one per physical core, grouped by NUMA node (node order), as upstream's
    ``get_cpu_ids_by_node`` counts them (``lscpu -p=CPU,Core,Socket,Node``) without importing SGLang. Without lscpu:
    one node holding every allowed CPU."""
    allowed = _allowed_cpus()
    if lscpu_output is None:
        try:
            lscpu_output = subprocess.run(["lscpu", "-p=CPU,Core,Socket,Node"], capture_output=True, text=True,
                                          timeout=10, check=True).stdout
        except (OSError, subprocess.SubprocessError):
            return [sorted(allowed)]
    first_of_core: dict[tuple[str, str], tuple[int, int]] = {}  # (core, socket) -> (cpu, node)
    for line in lscpu_output.splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        fields = (line.split(",") + ["", "", "", ""])[:4]
        try:
            cpu = int(fields[0])
        except ValueError:
            continue
        node = int(fields[3]) if fields[3].strip().isdigit() else 0
        first_of_core.setdefault((fields[1], fields[2]), (cpu, node))
    by_node: dict[int, list[int]] = {}
    for cpu, node in first_of_core.values():
        if cpu in allowed:
            by_node.setdefault(node, []).append(cpu)
    groups = [sorted(cpus) for _, cpus in sorted(by_node.items()) if cpus]
    return groups or [sorted(allowed)]


def threads_bind(ranks: int, cores_by_node: Optional[Sequence[Sequence[int]]] = None) -> str:
    """A ``SGLANG_CPU_OMP_THREADS_BIND`` value giving each of ``ranks`` ranks an even, contiguous share of the
    physical cores (NUMA order, so ranks stay within a node where the counts allow): ``"0|1"`` for two ranks on two
    cores, ``"0-3|4-7"`` on eight. Raises ValueError when there are fewer cores than ranks."""
    if ranks < 1:
        raise ValueError(f"need at least one rank, got {ranks}")
    cores = [c for node in (cores_by_node if cores_by_node is not None else physical_cores_by_node()) for c in node]
    if len(cores) < ranks:
        raise ValueError(f"{ranks} CPU ranks need one physical core each, this process may use {len(cores)}; "
                         f"lower --tp-size or set {THREADS_BIND_ENV} (one '|'-separated core list per rank)")
    per, extra = divmod(len(cores), ranks)
    groups, start = [], 0
    for rank in range(ranks):
        size = per + (1 if rank < extra else 0)
        groups.append(format_cpu_list(cores[start:start + size]))
        start += size
    return "|".join(groups)


# a ------------------------------------------------------------------------------------------------------------
def _init_threads_binding(original, *args: Any, numa_index: int, world_size: int, **kwargs: Any):
    if os.environ.get(THREADS_BIND_ENV, "all") != "all":
        return original(*args, numa_index=numa_index, world_size=world_size, **kwargs)
    from sglang.srt.utils import numa_utils

    nodes = [parse_cpu_list(node) for node in numa_utils.get_cpu_ids_by_node()]
    if world_size <= len(nodes):  # upstream's default (one NUMA node per rank) holds
        return original(*args, numa_index=numa_index, world_size=world_size, **kwargs)
    bind = threads_bind(world_size, nodes)
    logger.info("%s is not set and %d ranks exceed %d NUMA node(s): binding %s=%s", THREADS_BIND_ENV, world_size,
                len(nodes), THREADS_BIND_ENV, bind)
    os.environ[THREADS_BIND_ENV] = bind
    try:
        return original(*args, numa_index=numa_index, world_size=world_size, **kwargs)
    finally:
        # Only this call reads it: SGLang's CPU memory sizing treats a set variable as "capacity unknown".
        os.environ.pop(THREADS_BIND_ENV, None)


# b ------------------------------------------------------------------------------------------------------------
def _native_binding_available() -> bool:
    """Upstream binds only on AMX/arm64 CPUs, through an op our sgl-kernel shim does not have."""
    from sglang.srt.distributed import bootstrap

    if not (getattr(bootstrap, "_is_cpu_amx_available", False) or getattr(bootstrap, "_is_cpu_arm64", False)):
        return False
    import torch

    try:
        return hasattr(torch.ops.sgl_kernel, "init_cpu_threads_env")
    except Exception:  # noqa: BLE001 - no sgl_kernel op namespace at all
        return False


def _world_size() -> int:
    from sglang.srt.runtime_context import get_parallel

    parallel = get_parallel()
    return int(parallel.dp_size) * int(parallel.tp_size) * int(parallel.pp_size)


def bind_this_process(cpus: Sequence[int]) -> None:
    """Pin this process to ``cpus`` and run that many intra-op threads."""
    import torch

    os.sched_setaffinity(0, set(cpus))
    torch.set_num_threads(len(cpus))


def _init_cpu_threads_env(original, *args: Any, local_omp_cpuid: Any = None, **kwargs: Any):
    if local_omp_cpuid is None or _native_binding_available() or _world_size() <= 1:
        return original(*args, local_omp_cpuid=local_omp_cpuid, **kwargs)
    cpus = parse_cpu_list(local_omp_cpuid if isinstance(local_omp_cpuid, str)
                          else ",".join(str(c) for c in local_omp_cpuid))
    bind_this_process(cpus)
    logger.info("CPU tensor parallelism: this rank runs %d thread(s) on CPU(s) %s (gloo all-reduce)", len(cpus),
                format_cpu_list(cpus))
    return None


# c ------------------------------------------------------------------------------------------------------------
def _init_model_parallel_group(original, *args: Any, **kwargs: Any):
    bound = inspect.signature(original).bind(*args, **kwargs)
    if str(bound.arguments.get("backend", "")).lower() != "gloo":
        return original(*args, **kwargs)
    bound.arguments["use_pynccl"] = False
    bound.arguments["use_custom_allreduce"] = False
    return original(*bound.args, **bound.kwargs)


_PS = "sglang.srt.distributed.parallel_state"

# Only in processes of SGLang's CPU engine (SGLANG_USE_CPU_ENGINE=1); listed in the contract.
HOOKS = (
    ("sglang.srt.utils.numa_utils.init_threads_binding", _init_threads_binding),
    ("sglang.srt.distributed.bootstrap._init_cpu_threads_env", _init_cpu_threads_env),
    (f"{_PS}.init_model_parallel_group", _init_model_parallel_group),
)

__all__ = ["HOOKS", "THREADS_BIND_ENV", "bind_this_process", "format_cpu_list", "parse_cpu_list",
           "physical_cores_by_node", "threads_bind"]
