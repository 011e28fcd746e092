"""Test-only fault injection: a deliberately *lossy* speculative-sampling verifier (never shipped).

Put this directory on ``PYTHONPATH`` and set ``SGLANG_DOMINO_TEST_LOSSY_VERIFIER=1``: every Python process of that
server (the scheduler runs in a child process, which inherits both) then replaces
``sglang_domino.verify.verify_sampling`` -- as soon as that module is imported, so before the worker's
``from sglang_domino.verify import verify_sampling`` binds it -- with the classic speculative-sampling bug: after a
rejection the bonus is drawn from the target distribution p itself instead of the residual norm(max(p − q, 0)).
The emitted token then follows min(p, q) + (1 − Σ min(p, q)) · p instead of p. ``tests/server/test_server_sampling.py``
checks that its statistical test rejects such a server. Without the variable this file does nothing.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import os
import sys

ENV = "SGLANG_DOMINO_TEST_LOSSY_VERIFIER"
MARKER = "SGLANG_DOMINO_TEST_LOSSY_VERIFIER active"


def _lossy_verify_sampling(draft_tokens, draft_probs, target_logits, params, generator=None):
    import torch

    from sglang_domino import verify as v

    v._check_shapes(draft_tokens, target_logits)
    n, p_len = draft_tokens.shape
    target_probs = v.target_distributions(target_logits, params)
    q = draft_probs.to(torch.float32)
    idx = draft_tokens[..., None]
    p_of_d = target_probs[:, :p_len].gather(2, idx).squeeze(2)
    q_of_d = q.gather(2, idx).squeeze(2)
    coins = torch.rand((n, p_len), generator=generator, device=target_logits.device)
    accept_len = v.accepted_prefix_len(coins * q_of_d < p_of_d)
    rows = torch.arange(n, device=target_logits.device)
    p_at = target_probs[rows, accept_len]
    bonus = v.sample_from(p_at, generator)  # BUG (on purpose): should be norm(max(p - q, 0)) after a rejection
    return v.VerifyResult(accept_len, bonus)


def _patch(module) -> None:
    module.verify_sampling = _lossy_verify_sampling
    print(f"{MARKER} (pid {os.getpid()})", file=sys.stderr, flush=True)


class _Finder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path, target=None):
        if fullname != "sglang_domino.verify":
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is None or spec.loader is None:
            return None
        loader = spec.loader
        exec_module = loader.exec_module

        def exec_and_patch(module):
            exec_module(module)
            _patch(module)

        loader.exec_module = exec_and_patch
        return spec


if os.environ.get(ENV) == "1":
    sys.meta_path.insert(0, _Finder())
