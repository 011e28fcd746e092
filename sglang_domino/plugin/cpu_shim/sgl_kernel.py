"""``sgl_kernel`` for SGLang's CPU engine when no CPU sgl-kernel is installed (see sglang_domino.plugin.cpu_sgl_kernel).

This directory is put on ``sys.path`` by the sglang-domino plugin only when the real package is absent and
``SGLANG_USE_CPU_ENGINE=1``; SGLang's spawned scheduler/detokenizer processes inherit ``sys.path`` from the
launcher, so they find this module before they import the SGLang modules that need it.
"""

from sglang_domino.plugin.cpu_sgl_kernel import populate_shim_module as _populate

_populate(globals())
del _populate
