"""Self-distillation: the target answers the training prompts itself, greedily (in process, or by a running
SGLang server), resumably; and the bookkeeping of the answered parts (``pending``, ``pack``).

Why self-distillation: a drafter is scored by how often its guesses match what the *target* would say, so
it is trained on the target's own greedy responses rather than on human answers (the paper and SpecForge
regenerate their training responses with the target for the same reason).
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import json
import logging
import os
import time
from collections import Counter
from pathlib import Path
from typing import Any, Iterable, Iterator, Optional, Sequence

from sglang_domino.training.jsonl import load_conversations, read_jsonl, write_jsonl
from sglang_domino.training.tokenization import tokenize_conversation

log = logging.getLogger(__name__)


def prompt_id(messages: Sequence[dict[str, str]]) -> str:
    """Identity of a prompt (its messages), used to resume self-distillation."""
    blob = json.dumps([{"role": m["role"], "content": m["content"]} for m in messages], ensure_ascii=False,
                      sort_keys=True)
    return hashlib.sha1(blob.encode()).hexdigest()[:16]


def prompt_key(item: dict[str, Any]) -> str:
    """The id of a prompt line: its own ``id``, else :func:`prompt_id` of its messages."""
    return item.get("id") or prompt_id(item["messages"])


def answered_key(conv: dict[str, Any]) -> str:
    """The id of the prompt a conversation answers: its ``id``, else :func:`prompt_id` of the turns before the
    answer (equal to :func:`prompt_key` of the prompt line it came from)."""
    return conv.get("id") or prompt_id(conv["messages"][:-1])


def _done_ids(out_path: Path) -> set[str]:
    """Prompt ids already answered in ``out_path``; a torn last line (killed mid-write) is cut off."""
    done: set[str] = set()
    if not out_path.is_file():
        return done
    with open(out_path, "rb+") as fh:
        data = fh.read()
        keep = data.rfind(b"\n") + 1
        if keep < len(data):
            fh.truncate(keep)
            log.warning("%s: dropped a torn last line", out_path)
    for line in data[:keep].decode("utf-8").splitlines():
        try:
            item = json.loads(line)
        except json.JSONDecodeError:
            continue
        done.add(answered_key(item))
    return done


def greedy_generate(model: Any, input_ids: Any, attention_mask: Any, max_new_tokens: int,
                    eos_token_id: Optional[int]) -> list[list[int]]:
    """Batched greedy decoding (left-padded prompts) that drops each row from the batch once it has emitted
    ``eos_token_id``; returns each row's new tokens (the eos included when produced).

    Why not ``model.generate``: it keeps finished rows in the batch until the longest response ends, and
    self-distilled responses range from 10 to 256 tokens, so most of its compute went to padding. Same
    arithmetic per row otherwise (position ids from the attention mask, as ``generate`` computes them)."""
    import torch
    from transformers import DynamicCache

    n = input_ids.shape[0]
    out: list[list[int]] = [[] for _ in range(n)]
    if max_new_tokens <= 0 or n == 0:
        return out
    alive = torch.arange(n)
    mask = attention_mask.to(torch.long)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    cache = DynamicCache()
    logits = model(input_ids=input_ids, attention_mask=mask, position_ids=positions, past_key_values=cache,
                   use_cache=True, logits_to_keep=1).logits[:, -1]
    next_pos = mask.sum(-1)
    for step in range(max_new_tokens):
        tokens = logits.float().argmax(-1)
        keep = []
        for j, (row, tok) in enumerate(zip(alive.tolist(), tokens.tolist())):
            out[row].append(tok)
            if tok != eos_token_id:
                keep.append(j)
        if not keep or step == max_new_tokens - 1:
            break
        if len(keep) < len(alive):
            idx = torch.tensor(keep)
            cache.batch_select_indices(idx)
            alive, tokens, mask, next_pos = alive[idx], tokens[idx], mask[idx], next_pos[idx]
        mask = torch.cat([mask, mask.new_ones(len(keep), 1)], dim=1)
        logits = model(input_ids=tokens[:, None], attention_mask=mask, position_ids=next_pos[:, None],
                       past_key_values=cache, use_cache=True).logits[:, -1]
        next_pos = next_pos + 1
    return out


def server_stream(url: str, prompts: Iterable[tuple[Any, list[int]]], max_new_tokens: int,
                  eos_token_id: Optional[int], concurrency: int) -> Iterator[tuple[Any, list[int]]]:
    """Greedy decoding by a running SGLang server (``POST {url}/generate`` with ``input_ids``): yields
    ``(key, new_tokens)`` in completion order, the eos appended when the server stopped on it -- the same
    contract as :func:`~sglang_domino.training.slot_decode.slot_greedy_stream`.

    Why keep it beside the in-process decoder: its tokens are exactly what the served target says (SpecForge
    regenerates its data the same way). The in-process decoder is faster on this CPU (bf16, both cores: ~3x
    the two one-core servers of parts 1-5), so it is the default."""
    import requests
    from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait

    def one(ids: list[int]) -> list[int]:
        r = requests.post(f"{url.rstrip('/')}/generate", timeout=3600, json={
            "input_ids": ids, "sampling_params": {"temperature": 0, "max_new_tokens": max_new_tokens}})
        r.raise_for_status()
        out = r.json()
        tokens = list(out["output_ids"])
        reason = (out["meta_info"].get("finish_reason") or {}).get("type")
        if reason == "stop" and eos_token_id is not None and (not tokens or tokens[-1] != eos_token_id):
            tokens.append(eos_token_id)
        return tokens

    source = iter(prompts)
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        running = {}
        for key, ids in source:
            running[pool.submit(one, ids)] = key
            if len(running) >= concurrency:
                break
        while running:
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            for fut in done:
                key = running.pop(fut)
                yield key, fut.result()
                nxt = next(source, None)
                if nxt is not None:
                    running[pool.submit(one, nxt[1])] = nxt[0]


def self_distill(target_dir: Path, prompts_path: Path, out_path: Path, max_new_tokens: int = 256,
                 batch_size: int = 16, *, limit: Optional[int] = None, num_threads: Optional[int] = 1,
                 max_prompt_tokens: int = 768, dtype: str = "bfloat16", progress: bool = True,
                 server_url: Optional[str] = None, sort_window: int = 1024,
                 feature_cache: Optional[Path] = None, feature_layers: Sequence[int] = (),
                 feature_max_len: int = 640) -> dict[str, float]:
    """Let the target answer ``prompts_path`` greedily and append conversations to ``out_path`` (JSONL).

    Each output line: ``{"messages": [...prompt..., {"role": "assistant", "content": ...}], "id", "kind",
    "source", "finish_reason": "stop"|"length", "completion_tokens"}``, written (in completion order) as
    soon as a response ends. Resumable: prompts whose id is already in ``out_path`` are skipped. Decoding is
    :func:`~sglang_domino.training.slot_decode.slot_greedy_stream` (continuous batching of up to ``batch_size``
    rows over a slot KV cache), or with ``server_url``
    a running SGLang server serving the same target (:func:`server_stream`, ``batch_size`` requests in flight).
    ``num_threads`` defaults to 1 because this machine's other core is
    shared (``None`` leaves torch's default). ``limit`` caps the prompts considered (from the top of the
    file). Returns a summary (prompts done, tokens generated, seconds, tokens/s)."""
    import torch
    from tqdm import tqdm
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from .slot_decode import slot_greedy_stream

    if num_threads:
        torch.set_num_threads(num_threads)
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    items = []
    with open(prompts_path, encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                items.append(json.loads(line))
    if limit is not None:
        items = items[:limit]
    done = _done_ids(out_path)
    todo = [it for it in items if prompt_key(it) not in done]
    summary = {"prompts_total": len(items), "already_done": len(items) - len(todo), "done": 0, "tokens": 0,
               "seconds": 0.0, "tokens_per_s": 0.0, "skipped_long": 0}
    if not todo:
        return summary

    tokenizer = AutoTokenizer.from_pretrained(target_dir)
    tokenizer.padding_side = "left"  # decoder-only batching: prompts end where generation starts
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    eos_id = tokenizer.eos_token_id

    def record(j: int, row: list[int]) -> dict[str, Any]:
        """The conversation line for prompt ``todo[j]`` and its new tokens ``row`` (eos included if produced)."""
        it = todo[j]
        finish = "length"
        if eos_id in row:
            row = row[: row.index(eos_id)]
            finish = "stop"
        content = tokenizer.decode(row, skip_special_tokens=True).strip()
        return {"messages": list(it["messages"]) + [{"role": "assistant", "content": content}],
                "id": prompt_key(it), "kind": it.get("kind"),
                "source": it.get("source"), "finish_reason": finish,
                "completion_tokens": len(row) + (finish == "stop")}

    writer = None
    captured: dict[int, dict[str, Any]] = {}  # records built by ``capture``, reused when the row is written
    if server_url:
        if feature_cache is not None:
            raise ValueError("--feature-cache needs the in-process decoder (not --server): it reads the hidden "
                             "states while decoding")
        decode = functools.partial(server_stream, server_url, concurrency=batch_size)
    else:
        from .features import FeatureCache, FeatureShardWriter

        model = AutoModelForCausalLM.from_pretrained(target_dir, dtype=getattr(torch, dtype)).eval()
        capture = None
        if feature_cache is not None:
            if not feature_layers:
                raise ValueError("--feature-cache needs --feature-layers (the drafter's target_layer_ids)")
            fingerprint = FeatureCache.fingerprint(Path(target_dir), feature_layers, dtype, dtype)
            FeatureCache.prepare(Path(feature_cache), fingerprint, getattr(torch, dtype))
            writer = FeatureShardWriter(feature_cache, getattr(torch, dtype))

            def capture(j: int, row: list[int], features_of) -> None:
                """Store the features of the training tokenisation of this conversation (what ``train`` keys its
                feature cache by), taken from the decoder's own forward passes."""
                rec = captured[j] = record(j, row)
                ids, _ = tokenize_conversation(tokenizer, rec["messages"], feature_max_len)
                writer.add(FeatureCache.sequence_key(ids), features_of(ids.tolist()))

        decode = functools.partial(slot_greedy_stream, model, batch_size=batch_size,
                                   max_prompt_tokens=max_prompt_tokens,
                                   feature_layers=list(feature_layers) if writer else (), capture=capture)

    def encoded() -> Iterator[tuple[int, list[int]]]:
        """Prompts tokenised lazily (35k chat templates take a while), over-long ones skipped, and each run of
        ``sort_window`` prompts sorted by length: the in-process decoder's attention reads every slot up to the
        longest slot, so rows of similar length waste less; windows keep the file's mix of prompt kinds."""
        for lo in range(0, len(todo), sort_window):
            window = []
            for j in range(lo, min(lo + sort_window, len(todo))):
                ids = tokenizer.apply_chat_template(todo[j]["messages"], tokenize=False, add_generation_prompt=True)
                ids = tokenizer(ids, add_special_tokens=False)["input_ids"]
                if len(ids) > max_prompt_tokens:
                    summary["skipped_long"] += 1
                    bar.update(1)
                    continue
                window.append((j, ids))
            if not server_url:
                window.sort(key=lambda item: len(item[1]))
            yield from window

    t0 = last_sync = time.time()
    bar = tqdm(total=len(todo), desc="self-distil", unit="prompt", disable=not progress, dynamic_ncols=True)
    with open(out_path, "a", encoding="utf-8") as out, torch.inference_mode():
        for j, row in decode(encoded(), max_new_tokens, eos_id):
            rec = captured.pop(j, None) or record(j, row)
            out.write(json.dumps(rec, ensure_ascii=False) + "\n")
            out.flush()  # a whole line per record: a kill leaves at most one torn line, cut on resume
            if time.time() - last_sync > 30:
                os.fsync(out.fileno())
                last_sync = time.time()
            summary["tokens"] += rec["completion_tokens"]
            summary["done"] += 1
            bar.update(1)
            bar.set_postfix(tok_s=f"{summary['tokens'] / max(time.time() - t0, 1e-9):.1f}", tokens=summary["tokens"])
    bar.close()
    if writer is not None:
        writer.flush()
        summary["feature_sequences"] = len(writer.written)
    summary["seconds"] = round(time.time() - t0, 1)
    summary["tokens_per_s"] = round(summary["tokens"] / max(summary["seconds"], 1e-9), 1)
    return summary


def answered_ids(parts: Sequence[Path]) -> set[str]:
    """Prompt ids of every conversation in ``parts`` (distillation outputs or shipped parts)."""
    return {answered_key(c) for p in parts for c in load_conversations(p)}


def pending_prompts(prompts_path: Path, out_path: Path, *, exclude: Sequence[Path] = (),
                    kinds: Optional[Sequence[str]] = None) -> dict[str, int]:
    """Write the prompts of ``prompts_path`` (a ``build`` ``train.jsonl``) that no part in ``exclude`` answers,
    in their order, optionally only those of ``kinds``: the input of the next ``distill`` run."""
    done = answered_ids(exclude)
    kept = [r for _, r in read_jsonl(prompts_path)
            if prompt_key(r) not in done and (not kinds or r.get("kind") in kinds)]
    write_jsonl(out_path, kept)
    return {"pending": len(kept), **{f"pending_{k}": n for k, n in sorted(Counter(r.get("kind") for r in kept).items())}}


def pack_conversations(inputs: Sequence[Path], out_path: Path, *, exclude: Sequence[Path] = (),
                       val_out: Optional[Path] = None, val_every: int = 0) -> dict[str, int]:
    """Gzip finished distillation outputs into one shippable part (``data/distilled/``).

    Conversations are deduplicated by prompt id against each other and against ``exclude`` (parts already
    shipped); torn lines are dropped. With ``val_out``, every ``val_every``-th kept conversation (in input order)
    goes there instead: a held-out validation set for ``sglang-domino train --val-data``."""
    seen = answered_ids(exclude)
    train, val = [], []
    for path in inputs:
        for conv in load_conversations(path):
            key = answered_key(conv)
            if key in seen:
                continue
            seen.add(key)
            kept = len(train) + len(val)
            (val if val_out is not None and val_every > 0 and kept % val_every == val_every - 1 else train).append(conv)
    for path, rows in ((out_path, train), (val_out, val)):
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            with gzip.open(path, "wt", encoding="utf-8") as fh:
                fh.writelines(json.dumps(c, ensure_ascii=False) + "\n" for c in rows)
    tokens = sum(int(c.get("completion_tokens", 0)) for c in train)
    return {"conversations": len(train), "response_tokens": tokens, "validation": len(val)}


__all__ = [
    "answered_ids",
    "answered_key",
    "greedy_generate",
    "pack_conversations",
    "pending_prompts",
    "prompt_id",
    "prompt_key",
    "self_distill",
    "server_stream",
]
