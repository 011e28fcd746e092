"""The pure-PyTorch sgl_kernel CPU shim: installed only when needed, exact ops, nothing pretending to be more."""

from __future__ import annotations

import os
import subprocess
import sys
import types

import pytest
import torch

from sglang_domino.plugin import cpu_sgl_kernel as shim


def test_assign_req_to_token_pool_matches_triton_semantics() -> None:
    req_to_token = torch.zeros(4, 16, dtype=torch.int32)
    req_pool_indices = torch.tensor([2, 0, 3])
    start = torch.tensor([1, 0, 5])
    end = torch.tensor([4, 2, 5])  # the third request writes nothing
    locs = torch.tensor([10, 11, 12, 20, 21], dtype=torch.int64)
    shim.assign_req_to_token_pool_cpu(req_pool_indices, req_to_token, start, end, locs, 16)
    assert req_to_token[2, 1:4].tolist() == [10, 11, 12]
    assert req_to_token[0, 0:2].tolist() == [20, 21]
    assert int(req_to_token.sum()) == 10 + 11 + 12 + 20 + 21


def test_assign_extend_cache_locs_is_the_reverse_gather() -> None:
    req_to_token = torch.arange(64, dtype=torch.int32).view(4, 16)
    out = torch.full((6,), -1, dtype=torch.int64)
    shim.assign_extend_cache_locs_cpu(torch.tensor([1, 3]), req_to_token, torch.tensor([2, 10]),
                                      torch.tensor([5, 13]), out, 16)
    assert out.tolist() == [18, 19, 20, 58, 59, 60]


def test_copy_all_layer_kv_cache_moves_rows_in_every_buffer() -> None:
    buffers = [torch.arange(40, dtype=torch.float32).view(10, 4).clone(), torch.arange(30, dtype=torch.int16).view(10, 3).clone()]
    expected = [b.clone() for b in buffers]
    tgt, src = torch.tensor([0, 7]), torch.tensor([7, 2])  # overlapping: row 7 is read and written
    for e in expected:
        e[tgt] = e[src].clone()
    ptrs = torch.tensor([b.data_ptr() for b in buffers], dtype=torch.uint64)
    strides = torch.tensor([b.stride(0) * b.element_size() for b in buffers], dtype=torch.int64)
    shim.copy_all_layer_kv_cache_cpu(ptrs, strides, tgt, src)
    for b, e in zip(buffers, expected):
        assert torch.equal(b, e)


def _python(code: str, **env: str) -> subprocess.CompletedProcess:
    full_env = {k: v for k, v in os.environ.items() if k != "SGLANG_USE_CPU_ENGINE"}
    full_env.update(env)
    return subprocess.run([sys.executable, "-c", code], env=full_env, capture_output=True, text=True, timeout=120)


def test_install_only_on_cpu_engine() -> None:
    code = "from sglang_domino.plugin import cpu_sgl_kernel as s; print(s.install())"
    assert _python(code).stdout.strip() == "False"
    assert _python(code, SGLANG_USE_CPU_ENGINE="1").stdout.strip() == "True"


def test_shim_surface_is_exactly_the_imported_names() -> None:
    code = (
        "from sglang_domino.plugin import cpu_sgl_kernel as s; s.install()\n"
        "import sgl_kernel, torch\n"
        "print(sorted(sgl_kernel.__all__))\n"
        "from sgl_kernel import verify_tree_greedy_cpu\n"
        "try:\n    verify_tree_greedy_cpu()\nexcept NotImplementedError as e:\n    print('NIE', 'verify_tree_greedy_cpu' in str(e))\n"
        "try:\n    from sgl_kernel import rmsnorm_cpu\nexcept ImportError:\n    print('ImportError')\n"
        "print(hasattr(torch.ops.sgl_kernel, 'convert_weight_packed'))\n"
    )
    out = _python(code, SGLANG_USE_CPU_ENGINE="1").stdout.splitlines()
    assert out[0] == str(sorted([*shim.PROVIDED, *shim.PLACEHOLDERS]))
    assert len(shim.PROVIDED) == 3 and len(shim.PLACEHOLDERS) == 5
    assert out[1:] == ["NIE True", "ImportError", "False"]


def test_spawned_children_find_the_shim(tmp_path) -> None:
    """SGLang's scheduler is a spawned process that imports SGLang before load_plugins: sys.path carries it."""
    code = (
        "import multiprocessing as mp\n"
        "from sglang_domino.plugin import cpu_sgl_kernel as s\n"
        "def child(q):\n    import sgl_kernel; q.put(sgl_kernel.__file__)\n"
        "if __name__ == '__main__':\n"
        "    s.install(); ctx = mp.get_context('spawn'); q = ctx.Queue()\n"
        "    p = ctx.Process(target=child, args=(q,)); p.start(); print(q.get(timeout=60)); p.join()\n"
    )
    path = tmp_path / "spawn_probe.py"
    path.write_text(code)
    env = dict(os.environ, SGLANG_USE_CPU_ENGINE="1")
    res = subprocess.run([sys.executable, str(path)], env=env, capture_output=True, text=True, timeout=120)
    assert res.stdout.strip().endswith(os.path.join("cpu_shim", "sgl_kernel.py")), res.stderr


@pytest.fixture
def no_sgl_kernel_module(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """No ``sgl_kernel`` imported yet in this process; afterwards the entry is put back (or removed)."""
    monkeypatch.setitem(sys.modules, shim.SHIM_MODULE_NAME, None)
    del sys.modules[shim.SHIM_MODULE_NAME]
    return monkeypatch


def _fake_real_sgl_kernel(root) -> None:
    """An importable ``sgl_kernel`` package that is not the shim (stands in for a real sgl-kernel install)."""
    pkg = root / "sgl_kernel"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("REAL = True\n")


def test_real_sgl_kernel_present_finds_an_importable_one(tmp_path, no_sgl_kernel_module) -> None:
    assert not shim.real_sgl_kernel_present()  # this environment has none (the other tests rely on it)
    _fake_real_sgl_kernel(tmp_path)
    no_sgl_kernel_module.syspath_prepend(str(tmp_path))
    assert shim.real_sgl_kernel_present()


def test_real_sgl_kernel_present_does_not_count_the_shim(no_sgl_kernel_module) -> None:
    no_sgl_kernel_module.syspath_prepend(shim.SHIM_DIR)  # importable, but it is the shim's own file
    assert shim.real_sgl_kernel_present() is False


def test_real_sgl_kernel_present_reads_an_imported_module_by_its_marker(no_sgl_kernel_module) -> None:
    imported = types.ModuleType(shim.SHIM_MODULE_NAME)
    no_sgl_kernel_module.setitem(sys.modules, shim.SHIM_MODULE_NAME, imported)
    assert shim.real_sgl_kernel_present() is True
    setattr(imported, shim.SHIM_MARKER, True)
    assert shim.real_sgl_kernel_present() is False


def test_install_leaves_a_real_sgl_kernel_alone(tmp_path, no_sgl_kernel_module) -> None:
    _fake_real_sgl_kernel(tmp_path)
    no_sgl_kernel_module.syspath_prepend(str(tmp_path))
    no_sgl_kernel_module.setenv("SGLANG_USE_CPU_ENGINE", "1")
    path_before = list(sys.path)
    assert shim.install() is False
    assert shim.SHIM_MODULE_NAME not in sys.modules and sys.path == path_before
