"""The SGLang plugin: ``--speculative-algorithm domino`` with no wrapper.

Installed as the entry point ``domino = "sglang_domino.plugin:register"`` in the group ``sglang.srt.plugins``.
SGLang's ``load_plugins()`` calls :func:`register` early in every process it starts (launcher, Engine,
scheduler, detokenizer), then applies the registered hooks. :func:`register`:

1. on ``SGLANG_USE_CPU_ENGINE=1`` without a real ``sgl_kernel``, installs the pure-PyTorch CPU shim
   (:mod:`.cpu_sgl_kernel`) before SGLang imports the modules that need it;
2. runs the startup contract check (:mod:`.contract`): every upstream name we subclass, call or hook must exist;
3. registers ``DOMINO`` (:mod:`.spec`: ``SpeculativeAlgorithm.register`` with ``validate_server_args`` that
   checks the drafter checkpoint up front, :mod:`.validate`) and the hooks (:mod:`.hooks`).

``sglang.Engine(...)`` on a CPU machine without sgl-kernel: the Engine module imports SGLang's CPU kernels
before the Engine loads plugins, so call SGLang's own ``sglang.srt.plugins.load_plugins()`` once before
``import``-ing/constructing the Engine (``python -m sglang.launch_server`` and ``sglang-domino serve`` need nothing).

When the contract check fails, DOMINO is still registered but its ``validate_server_args`` refuses to start,
naming the missing upstream name -- ``load_plugins`` swallows exceptions raised by plugins, so raising here
would only surface later as "Unknown speculative algorithm name". Servers that do not use Domino are not
affected by a failed check.
"""

from __future__ import annotations

import logging

logger = logging.getLogger(__name__)

_registered = False


def register() -> None:
    """Entry point of the ``sglang.srt.plugins`` group. Idempotent."""
    global _registered
    if _registered:
        return
    from sglang_domino.plugin import cpu_sgl_kernel

    cpu_sgl_kernel.install()

    from sglang_domino.plugin.contract import check_contract_once

    failure = check_contract_once()
    if failure is not None:
        logger.error("%s", failure)

    from sglang_domino.plugin.spec import register_algorithm

    register_algorithm()
    if failure is None:
        from sglang_domino.plugin.cpu_fast_paths import configure_from_environment
        from sglang_domino.plugin.hooks import register_hooks

        configure_from_environment()
        register_hooks()
    _registered = True


__all__ = ["register"]
