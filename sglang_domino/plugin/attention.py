"""torch_native attention computing only the rows a step adds (the same attention as upstream's kernels).

Used by two hooks: the extends of a Domino process (the verify and the draft block of every speculative step,
:mod:`.hooks` 7) and decode in every CPU process (:mod:`.cpu_fast_paths`). Plain PyTorch; no SGLang import.
"""

from __future__ import annotations

from typing import Iterable

import torch
import torch.nn.functional as F


def sdpa_new_tokens_only(query, output, k_cache, v_cache, req_to_token, req_pool_indices, seq_lens,
                         extend_prefix_lens, extend_seq_lens, *, scaling=None, enable_gqa: bool = False,
                         causal: bool = True):
    """torch_native extend attention computing the new tokens' rows only.

    query/output [num_new_tokens, heads, head_dim] (requests back to back); k_cache/v_cache
    [pool_tokens, kv_heads, head_dim]; req_to_token [max_reqs, max_context]; the others [num_seqs].
    Request i attends from its ``extend_seq_lens[i]`` new tokens to its ``seq_lens[i]`` cached keys; causal:
    new token t (absolute position prefix + t) sees keys 0 .. prefix + t.

    Why: upstream's ``_run_sdpa_forward_extend`` pads every request's queries to its whole length and runs
    square attention, O(length²) per request and layer. A speculative step adds 4-16 tokens to a context of
    hundreds (the target's verify, the drafter's block), so on CPU this attention was 47 % of a Domino
    scheduler thread's time at 16 requests (py-spy, 2026-12-03). Same attention, n × length work instead.
    """
    # Python ints up front: one conversion per tensor instead of one per request and field.
    requests = zip(extend_seq_lens.tolist(), seq_lens.tolist(), extend_prefix_lens.tolist(),
                   req_pool_indices.tolist())
    return sdpa_over_requests(query, output, k_cache, v_cache, req_to_token, requests, scaling=scaling,
                              enable_gqa=enable_gqa, causal=causal)


def sdpa_over_requests(query, output, k_cache, v_cache, req_to_token, requests: Iterable[tuple[int, int, int, int]],
                       *, scaling=None, enable_gqa: bool = False, causal: bool = True):
    """The loop of :func:`sdpa_new_tokens_only` over ``(num_new, seq_len, prefix_len, pool_row)`` per request.

    Decode (one new token after ``seq_len - 1`` cached keys) builds these tuples from its seq_lens directly, with
    no per-layer tensors for the prefix and new-token counts.
    """
    q_heads_first = query.movedim(0, 1)  # [heads, tokens, dim]
    start = 0
    for n, total, prefix, pool_row in requests:
        q = q_heads_first[:, start : start + n]
        slots = req_to_token[pool_row, :total]
        # index_select, not k_cache[slots]: in a busy scheduler the advanced-indexing gather cost ~2x the
        # attention itself on CPU (py-spy, 2026-12-03); index_select copies the rows directly.
        k = k_cache.index_select(0, slots).movedim(0, 1)
        v = v_cache.index_select(0, slots).movedim(0, 1)
        if k.dtype != q.dtype:
            k, v = k.to(q.dtype), v.to(q.dtype)
        mask = None
        if causal and n > 1:
            new_pos = prefix + torch.arange(n, device=q.device)
            mask = torch.arange(total, device=q.device)[None, :] <= new_pos[:, None]  # [n, total]
        out = F.scaled_dot_product_attention(q[None], k[None], v[None], attn_mask=mask, scale=scaling,
                                             enable_gqa=enable_gqa)[0]
        output[start : start + n] = out.movedim(0, 1)
        start += n
    return output


__all__ = ["sdpa_new_tokens_only", "sdpa_over_requests"]
