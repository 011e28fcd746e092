"""Fast greedy decoding of a Llama-family target for self-distillation: a fixed set of batch slots over one
KV cache, refilled as soon as a row ends.

Why not ``transformers``' ``generate`` or a ``DynamicCache`` loop: on this CPU the cost of those loops is the
cache, not the model -- a ``DynamicCache`` concatenates every layer's keys and values at every step (a full copy
of the cache per token), and merging a refill batch pads and copies it again. Here each slot owns a
``[kv_heads, capacity, head_dim]`` region (capacity resized in chunks, rarely), a decode step writes one position
per slot in place, and attention reads the slots' prefixes under a length mask. The layers' own modules (norms, projections, rotary embedding,
MLP) do the arithmetic, so a row's tokens are the model's own greedy tokens (up to floating-point
reassociation of the batched matmuls; identical in float32 in the tests).

Contract (the same as :func:`sglang_domino.training.distill.server_stream`): ``slot_greedy_stream(model, prompts,
max_new_tokens, eos_token_id, batch_size)`` consumes ``(key, prompt_ids)`` pairs and yields ``(key,
new_tokens)`` in completion order, the eos included when produced.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Iterable, Iterator, Optional, Sequence

import torch
import torch.nn.functional as F


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def _rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """``x`` [batch, heads, seq, head_dim]; ``cos``/``sin`` [batch, seq, head_dim] (the model's rotary module)."""
    return x * cos[:, None] + _rotate_half(x) * sin[:, None]


class SlotGreedyDecoder:
    """Greedy decoding over ``slots`` rows of a KV cache ``[layers, slots, kv_heads, capacity, head_dim]``.
    ``prefill(slots, prompts)`` starts rows, ``step()`` advances every live row by one token.

    With ``feature_layers`` it also keeps, per slot and position, the outputs of those layers concatenated
    (``hidden_states[id + 1]`` in HF terms: what the drafter is trained on), so
    :meth:`sequence_features` can hand out a finished row's training features without a second target pass."""

    def __init__(self, model: Any, slots: int, max_len: int, feature_layers: Sequence[int] = ()):
        config = model.config
        self.model = model
        self.inner = model.model
        self.layers = list(self.inner.layers)
        self.heads = config.num_attention_heads
        self.kv_heads = config.num_key_value_heads
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // self.heads
        self.scale = self.head_dim ** -0.5
        self.dtype = next(model.parameters()).dtype
        self.slots = slots
        self.keys = self.values = torch.zeros(0, dtype=self.dtype)
        self.capacity = 0
        self.max_len = max_len
        self.lengths = torch.zeros(slots, dtype=torch.long)  # filled positions per slot
        self.last = torch.zeros(slots, dtype=torch.long)  # the token each slot feeds next
        self.live = torch.zeros(slots, dtype=torch.bool)
        self.feature_column = {layer: j for j, layer in enumerate(feature_layers)}
        self.features = None
        if self.feature_column:
            hidden = config.hidden_size
            self.features = torch.zeros(slots, max_len, len(self.feature_column) * hidden, dtype=self.dtype)
            self.fed: list[list[int]] = [[] for _ in range(slots)]  # tokens whose KV and features are cached

    CHUNK = 64

    def _columns(self, layer: int) -> Optional[slice]:
        """The slice of the feature axis holding ``layer``'s output, or None when it is not captured."""
        j = self.feature_column.get(layer)
        if j is None:
            return None
        hidden = self.features.shape[-1] // len(self.feature_column)
        return slice(j * hidden, (j + 1) * hidden)

    def _live_width(self) -> int:
        """Positions the live rows hold, plus the one each writes next (0 with no live row)."""
        live = self.lengths[self.live]
        return int(live.max()) + 1 if live.numel() else 0

    def _fit_capacity(self, width: int) -> None:
        """Size the cache's position axis to ``width`` rounded up to a chunk (grow, or shrink once the long rows
        have left). Why not preallocate ``max_len``: attention reads the whole axis of every slot, and a slice
        of it would be non-contiguous across slots, which makes ``matmul`` copy it first -- at 64 slots the
        copies cost more than the attention itself."""
        want = min(self.max_len, -(-width // self.CHUNK) * self.CHUNK)
        if self.capacity >= want and self.capacity - want < 4 * self.CHUNK:
            return  # big enough, and not so oversized that a copy to shrink it pays
        if want > self.capacity:
            want = min(self.max_len, want + self.CHUNK)  # grow a chunk ahead: a reallocation copies everything
        shape = (len(self.layers), self.slots, self.kv_heads, want, self.head_dim)
        keys, values = torch.zeros(shape, dtype=self.dtype), torch.zeros(shape, dtype=self.dtype)
        keep = min(want, self.capacity)
        if keep:
            keys[..., :keep, :] = self.keys[..., :keep, :]
            values[..., :keep, :] = self.values[..., :keep, :]
        self.keys, self.values, self.capacity = keys, values, want

    def _project(self, layer: Any, x: torch.Tensor, positions: torch.Tensor):
        """``x`` [batch, seq, hidden] -> q [batch, heads, seq, d], k/v [batch, kv_heads, seq, d], rotated."""
        b, t, _ = x.shape
        attn = layer.self_attn
        h = layer.input_layernorm(x)
        q = attn.q_proj(h).view(b, t, self.heads, self.head_dim).transpose(1, 2)
        k = attn.k_proj(h).view(b, t, self.kv_heads, self.head_dim).transpose(1, 2)
        v = attn.v_proj(h).view(b, t, self.kv_heads, self.head_dim).transpose(1, 2)
        cos, sin = self.inner.rotary_emb(x, positions)
        return _rope(q, cos, sin), _rope(k, cos, sin), v

    def _finish_layer(self, layer: Any, x: torch.Tensor, attn_out: torch.Tensor) -> torch.Tensor:
        b, _, t, _ = attn_out.shape
        x = x + layer.self_attn.o_proj(attn_out.transpose(1, 2).reshape(b, t, -1))
        return x + layer.mlp(layer.post_attention_layernorm(x))

    def _next_token(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` [batch, hidden] (last positions) -> greedy token ids [batch]."""
        return self.model.lm_head(self.inner.norm(x)).float().argmax(-1)

    def prefill(self, slots: list[int], prompts: list[list[int]]) -> list[int]:
        """Run ``prompts`` into ``slots`` and return each prompt's first generated token.

        The prompts are packed into one sequence (positions restarting per prompt; the projections and MLP run
        once over all of them, attention per prompt): no padding, where padding to the longest of a group of
        short chat prompts would triple the work, and no dense cross-prompt mask, which SDPA's CPU kernel is
        slow with."""
        lengths = [len(ids) for ids in prompts]
        if max(lengths) + 1 > self.max_len:
            raise ValueError(f"prompt of {max(lengths)} tokens does not fit a slot of {self.max_len} positions")
        self._fit_capacity(max(max(lengths), self._live_width()))
        ids = torch.tensor([t for row in prompts for t in row], dtype=torch.long)[None]
        positions = torch.cat([torch.arange(n) for n in lengths])[None]
        starts = [0]
        for n in lengths[:-1]:
            starts.append(starts[-1] + n)
        x = self.inner.embed_tokens(ids)
        for i, layer in enumerate(self.layers):
            q, k, v = self._project(layer, x, positions)
            out = torch.empty_like(q)
            for slot, start, n in zip(slots, starts, lengths):  # causal attention within each prompt
                span = slice(start, start + n)
                self.keys[i, slot, :, :n] = k[0, :, span]
                self.values[i, slot, :, :n] = v[0, :, span]
                out[:, :, span] = F.scaled_dot_product_attention(q[:, :, span], k[:, :, span], v[:, :, span],
                                                                 is_causal=True, scale=self.scale,
                                                                 enable_gqa=self.kv_heads != self.heads)
            x = self._finish_layer(layer, x, out)
            cols = self._columns(i)
            if cols is not None:
                for slot, start, n in zip(slots, starts, lengths):
                    self.features[slot, :n, cols] = x[0, start:start + n]
        last = torch.tensor([start + n - 1 for start, n in zip(starts, lengths)])
        tokens = self._next_token(x[0, last])
        index = torch.tensor(slots, dtype=torch.long)
        self.lengths[index] = torch.tensor(lengths, dtype=torch.long)
        self.last[index] = tokens
        self.live[index] = True
        if self.features is not None:
            for slot, row in zip(slots, prompts):
                self.fed[slot] = list(row)
        return tokens.tolist()

    def _decode_attention(self, q: torch.Tensor, layer: int, hidden: torch.Tensor) -> torch.Tensor:
        """One query per slot: ``q`` [slots, heads, 1, d] against the slots' cached positions, ``hidden``
        [slots, 1, 1, capacity] masking each slot's unwritten tail -> [slots, heads, 1, d].

        Why not SDPA: its CPU flash kernel tiles over queries and spends ~8 ms a layer on one query per row
        (64 rows, ~200 positions); two batched matmuls with the query heads grouped under their shared
        key/value head take a fraction of that."""
        slots = q.shape[0]
        group = self.heads // self.kv_heads
        keys = self.keys[layer]  # [slots, kv_heads, capacity, d], contiguous
        values = self.values[layer]
        q = q.view(slots, self.kv_heads, group, self.head_dim)
        scores = torch.matmul(q, keys.transpose(-1, -2)).float() * self.scale  # [slots, kv_heads, group, cap]
        probs = scores.masked_fill(hidden, float("-inf")).softmax(-1).to(values.dtype)
        return torch.matmul(probs, values).view(slots, self.heads, 1, self.head_dim)

    def step(self) -> torch.Tensor:
        """Feed every slot's last token; return the next greedy token of each slot [slots] (meaningless for
        slots that are not live: they compute on stale state and are ignored)."""
        rows = torch.arange(self.slots)
        self._fit_capacity(max(self._live_width(), 1))
        pos = self.lengths.clamp(max=self.capacity - 1)  # dead slots may point past a shrunk cache
        # Each slot sees its own prefix and the position being written now.
        hidden = (torch.arange(self.capacity)[None] > pos[:, None])[:, None, None]  # [slots, 1, 1, capacity]
        x = self.inner.embed_tokens(self.last[:, None])
        for i, layer in enumerate(self.layers):
            q, k, v = self._project(layer, x, pos[:, None])
            self.keys[i, rows, :, pos] = k[:, :, 0]
            self.values[i, rows, :, pos] = v[:, :, 0]
            x = self._finish_layer(layer, x, self._decode_attention(q, i, hidden))
            cols = self._columns(i)
            if cols is not None:
                self.features[rows, pos, cols] = x[:, 0]
        if self.features is not None:
            for slot, token in zip(torch.nonzero(self.live).flatten().tolist(), self.last[self.live].tolist()):
                self.fed[slot].append(token)
        tokens = self._next_token(x[:, -1])
        self.lengths = torch.where(self.live, self.lengths + 1, self.lengths)
        self.last = torch.where(self.live, tokens, self.last)
        return tokens

    def sequence_features(self, slot: int, ids: list[int]) -> torch.Tensor:
        """Features ``[len(ids), n·H]`` of the sequence ``ids`` in ``slot`` (a row that has just finished).

        ``ids`` is the training tokenisation of the finished conversation: it shares a prefix with what the
        slot has fed (the prompt and the response, until a re-tokenisation boundary) and then adds what the
        row never fed (its last token, the chat template's end of turn). Only that tail is run, with the
        cached prefix as context."""
        if self.features is None:
            raise RuntimeError("SlotGreedyDecoder was built without feature_layers")
        if len(ids) > self.max_len:
            raise ValueError(f"sequence of {len(ids)} tokens exceeds the slot length {self.max_len}")
        fed = self.fed[slot]
        common = 0
        for a, b in zip(fed, ids):
            if a != b:
                break
            common += 1
        if common < len(ids):
            self._extend(slot, ids[common:], common)
            self.fed[slot] = list(ids)
        return self.features[slot, : len(ids)].clone()

    def _extend(self, slot: int, ids: list[int], start: int) -> None:
        """Run ``ids`` into ``slot`` at positions ``start...`` (attending to its cached positions before
        ``start``): KV cache and features only; the slot's decoding state is left alone."""
        end = start + len(ids)
        self._fit_capacity(max(end, self._live_width()))
        x = self.inner.embed_tokens(torch.tensor([ids], dtype=torch.long))
        positions = torch.arange(start, end)[None]
        visible = torch.arange(end)[None] <= positions[0][:, None]  # [len(ids), end]: causal, offset by start
        for i, layer in enumerate(self.layers):
            q, k, v = self._project(layer, x, positions)
            self.keys[i, slot, :, start:end] = k[0]
            self.values[i, slot, :, start:end] = v[0]
            out = F.scaled_dot_product_attention(q, self.keys[i, slot:slot + 1, :, :end],
                                                 self.values[i, slot:slot + 1, :, :end], attn_mask=visible,
                                                 scale=self.scale, enable_gqa=self.kv_heads != self.heads)
            x = self._finish_layer(layer, x, out)
            cols = self._columns(i)
            if cols is not None:
                self.features[slot, start:end, cols] = x[0]


FeaturesOf = Callable[[list[int]], torch.Tensor]


def slot_greedy_stream(model: Any, prompts: Iterable[tuple[Any, list[int]]], max_new_tokens: int,
                       eos_token_id: Optional[int], batch_size: int, max_prompt_tokens: int = 768, *,
                       feature_layers: Sequence[int] = (),
                       capture: Optional[Callable[[Any, list[int], FeaturesOf], None]] = None,
                       ) -> Iterator[tuple[Any, list[int]]]:
    """Continuous-batching greedy decoding with :class:`SlotGreedyDecoder`: yields ``(key, new_tokens)`` for
    each ``(key, prompt_ids)`` as soon as it ends (eos included when produced), in completion order.

    Free slots are refilled together once an eighth of them are free (one prefill forward for the group: a
    prefill of one short prompt at a time leaves the matmuls too thin to use the cores), so the batch stays
    near full until the prompts run out. Prompts over ``max_prompt_tokens`` are a caller error.

    ``capture(key, new_tokens, features_of)``, with ``feature_layers``, is called for each finished row just
    before it is yielded; ``features_of(ids)`` returns the features ``[len(ids), n·H]`` of a sequence ``ids``
    that continues that row's prompt and response (:meth:`SlotGreedyDecoder.sequence_features`)."""
    if max_new_tokens <= 0:
        for key, _ in prompts:
            yield key, []
        return
    # Two spare positions: a captured training sequence adds the template's end of turn after the response.
    decoder = SlotGreedyDecoder(model, batch_size, max_prompt_tokens + max_new_tokens + 2, feature_layers)
    source = iter(prompts)
    keys: list[Any] = [None] * batch_size
    outs: list[list[int]] = [[] for _ in range(batch_size)]
    exhausted = False
    refill_at = max(1, batch_size // 8)

    def finished(out: list[int]) -> bool:
        return out[-1] == eos_token_id or len(out) >= max_new_tokens

    def done(slot: int, key: Any, out: list[int]) -> tuple[Any, list[int]]:
        decoder.live[slot] = False
        if capture is not None:
            capture(key, out, functools.partial(decoder.sequence_features, slot))
        return key, out

    while True:
        free = [slot for slot in range(batch_size) if not decoder.live[slot]]
        live = batch_size - len(free)
        while not exhausted and free and (len(free) >= refill_at or live == 0):
            batch = []
            for item in source:
                if len(item[1]) > max_prompt_tokens:
                    raise ValueError(f"prompt {item[0]!r} has {len(item[1])} tokens, over "
                                     f"max_prompt_tokens={max_prompt_tokens}")
                batch.append(item)
                if len(batch) == len(free):
                    break
            exhausted = len(batch) < len(free)
            if not batch:
                break
            used = free[: len(batch)]
            firsts = decoder.prefill(used, [ids for _, ids in batch])
            free = free[len(batch):]
            for slot, (key, _), first in zip(used, batch, firsts):
                if finished([first]):  # ended on its first token: the slot is free again
                    free.append(slot)
                    yield done(slot, key, [first])
                else:
                    keys[slot], outs[slot] = key, [first]
                    live += 1
        if live == 0:
            return
        tokens = decoder.step().tolist()
        for slot in range(batch_size):
            if not decoder.live[slot]:
                continue
            outs[slot].append(tokens[slot])
            if finished(outs[slot]):
                yield done(slot, keys[slot], outs[slot])
