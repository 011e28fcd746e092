"""Training-data pipeline: assistant-only loss mask, held-out/train disjointness, resumable self-distillation.

The tokenizer and the tiny random Llama that stand in for the real target are in ``tiny_chat_target.py``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from sglang_domino.embedded import HELDOUT_PROMPTS
from sglang_domino.training.corpus import build_prompt_corpus, read_heldout, select_heldout
from sglang_domino.training.distill import (
    answered_key,
    greedy_generate,
    pack_conversations,
    pending_prompts,
    prompt_id,
    self_distill,
)
from sglang_domino.training.jsonl import load_conversations, read_jsonl, write_jsonl
from sglang_domino.training.sources import Prompt, normalise
from sglang_domino.training.tokenization import tokenize_conversation
from tiny_chat_target import tiny_target, tokenizer  # noqa: F401 (pytest fixtures)

CONV = [
    {"role": "user", "content": "What is the capital of France?"},
    {"role": "assistant", "content": "The capital of France is Paris."},
    {"role": "user", "content": "Write a haiku about the sea."},
    {"role": "assistant", "content": "Waves fold into foam,\nthe tide keeps its slow promise."},
]


def _masked_runs(ids: torch.Tensor, mask: torch.Tensor) -> list[list[int]]:
    runs, cur = [], []
    for tok, m in zip(ids.tolist(), mask.tolist()):
        if m:
            cur.append(tok)
        elif cur:
            runs.append(cur)
            cur = []
    if cur:
        runs.append(cur)
    return runs


def test_loss_mask_covers_exactly_the_assistant_tokens(tokenizer):
    ids, mask = tokenize_conversation(tokenizer, CONV, max_len=4096)
    assert ids.dtype == torch.long and mask.dtype == torch.bool and ids.shape == mask.shape
    full = tokenizer.apply_chat_template(CONV, tokenize=False)
    assert tokenizer.decode(ids.tolist()) == full  # the whole rendered conversation, nothing lost
    runs = _masked_runs(ids, mask)
    # One contiguous run per assistant turn: its content and the end-of-turn token the target generates...
    assert [tokenizer.decode(r) for r in runs] == [m["content"] + "<|im_end|>" for m in CONV if m["role"] == "assistant"]
    # ...and nothing else: no system/user text, no role header, no newline after <|im_end|>.
    unmasked = tokenizer.decode([t for t, m in zip(ids.tolist(), mask.tolist()) if not m])
    assert "Paris" not in unmasked and "haiku" in unmasked and unmasked.count("<|im_start|>assistant\n") == 2
    # The token right before each run is the role header's newline, the one after it the template's "\n".
    starts = [i for i in range(len(mask)) if mask[i] and (i == 0 or not mask[i - 1])]
    assert all(tokenizer.decode(ids[:s].tolist()).endswith("<|im_start|>assistant\n") for s in starts)


def test_loss_mask_truncated_final_turn_and_max_len(tokenizer):
    ids, mask = tokenize_conversation(tokenizer, CONV, max_len=4096, final_turn_complete=False)
    runs = _masked_runs(ids, mask)
    assert tokenizer.decode(runs[0]).endswith("<|im_end|>")  # earlier turns keep their end-of-turn token
    assert tokenizer.decode(runs[-1]) == CONV[-1]["content"]  # a cut response never produced <|im_end|>
    short_ids, short_mask = tokenize_conversation(tokenizer, CONV, max_len=20)
    full_ids, full_mask = tokenize_conversation(tokenizer, CONV, max_len=4096)
    assert len(short_ids) == 20 and torch.equal(short_ids, full_ids[:20]) and torch.equal(short_mask, full_mask[:20])


def _synthetic_prompts() -> list[Prompt]:
    passage = ("The json module exposes an API familiar to users of the standard library marshal and pickle "
               "modules, and encodes basic Python object hierarchies.")
    ps = [Prompt(f"Question number {i} about topic {i % 7}?", "chat", "chatterbot-corpus", f"c{i}") for i in range(40)]
    ps += [Prompt(f"What is {i} times {i + 3}?", "math", "synthetic", f"m{i}") for i in range(40)]
    ps += [Prompt(f"Summarise this:\n\n{passage} Variant {i}.", "explain", "python-doc", f"d{i}") for i in range(3)]
    # The same passage under another template and another group: must not leak into training if held out.
    ps += [Prompt(f"Explain this simply:\n\n{passage} Variant {i}.", "explain", "python-doc", f"e{i}") for i in range(3)]
    ps += [Prompt("question number 1 about topic 1", "chat", "chatterbot-corpus", "dup")]  # normalised duplicate
    return ps


def test_heldout_selection_is_deterministic_and_order_free():
    ps = _synthetic_prompts()
    quotas = {("chat", "chatterbot-corpus"): 5, ("math", "synthetic"): 3, ("explain", "python-doc"): 2}
    a = select_heldout(ps, seed=0, quotas=quotas)
    b = select_heldout(list(reversed(ps)), seed=0, quotas=quotas)
    assert a == b and len(a) == 10
    assert select_heldout(ps, seed=1, quotas=quotas) != a


def test_train_never_overlaps_heldout(tmp_path):
    ps = _synthetic_prompts()
    quotas = {("chat", "chatterbot-corpus"): 5, ("math", "synthetic"): 3}
    held = select_heldout(ps, seed=0, quotas=quotas)
    # Hold out exactly one passage prompt, so the passage checks below are about it alone.
    held.append(next(p for p in ps if p.group == "d1"))
    heldout_file = tmp_path / "held.jsonl"
    write_jsonl(heldout_file, (p.record() for p in held))
    train_path, heldout_path = build_prompt_corpus(tmp_path / "out", seed=3, heldout_from=heldout_file, prompts=ps)
    train = [json.loads(line) for line in train_path.read_text().splitlines()]
    heldout = [json.loads(line) for line in heldout_path.read_text().splitlines()]
    assert len(heldout) == len(held)
    t_texts = {normalise(r["messages"][0]["content"]) for r in train}
    h_texts = {normalise(r["messages"][0]["content"]) for r in heldout}
    assert not t_texts & h_texts
    assert not {r["group"] for r in train} & {r["group"] for r in heldout}
    assert len(t_texts) == len(train)  # de-duplicated
    # "Explain this simply: <passage> Variant 1." shares the held-out passage: excluded although its group differs.
    assert not any("Variant 1." in r["messages"][0]["content"] for r in train)
    assert any("Variant 2." in r["messages"][0]["content"] for r in train)


@pytest.mark.slow
def test_installed_sources_split_against_the_shipped_heldout(tmp_path):
    """The real pipeline on whatever sources this machine has (PyPI ones at least, via the embedded extra)."""
    train_path, heldout_path = build_prompt_corpus(tmp_path, seed=0)
    heldout = [json.loads(line) for line in heldout_path.read_text().splitlines()]
    assert heldout_path.read_text() == "".join(json.dumps(p.record(), ensure_ascii=False) + "\n"
                                               for p in read_heldout(HELDOUT_PROMPTS))
    h_texts = {normalise(r["messages"][0]["content"]) for r in heldout}
    h_groups = {r["group"] for r in heldout}
    n = 0
    with open(train_path) as fh:
        for line in fh:
            r = json.loads(line)
            assert normalise(r["messages"][0]["content"]) not in h_texts and r["group"] not in h_groups
            n += 1
    assert n > 2000  # synthetic math + writing alone give ~2.7k


def test_shipped_heldout_prompts():
    lines = HELDOUT_PROMPTS.read_text(encoding="utf-8").splitlines()
    items = [json.loads(line) for line in lines]
    assert 48 <= len(items) <= 80
    assert all(it["messages"][0]["role"] == "user" and it["messages"][0]["content"].strip() for it in items)
    assert {"chat", "code", "explain"} <= {it["kind"] for it in items}
    assert len({normalise(it["messages"][0]["content"]) for it in items}) == len(items)


def test_greedy_generate_matches_hf_generate(tiny_target, tokenizer):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_target, dtype=torch.float32).eval()
    tokenizer.padding_side = "left"
    texts = [tokenizer.apply_chat_template([{"role": "user", "content": q}], tokenize=False, add_generation_prompt=True)
             for q in ("What is the capital of France?", "Explain recursion", "haiku")]
    enc = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    # Pretend a frequent token ends the turn, so rows finish at different steps and get dropped.
    with torch.inference_mode():
        ref = model.generate(**enc, max_new_tokens=12, do_sample=False, pad_token_id=tokenizer.pad_token_id,
                             eos_token_id=-1)[:, enc["input_ids"].shape[1]:].tolist()
    stop = ref[1][4]
    with torch.inference_mode():
        ref = model.generate(**enc, max_new_tokens=12, do_sample=False, pad_token_id=tokenizer.pad_token_id,
                             eos_token_id=stop)[:, enc["input_ids"].shape[1]:].tolist()
        mine = greedy_generate(model, enc["input_ids"], enc["attention_mask"], 12, stop)
    expected = [row[: row.index(stop) + 1] if stop in row else row for row in ref]
    assert mine == expected and len(mine[1]) <= 5


def test_self_distill_resumes(tmp_path, tiny_target):
    prompts = tmp_path / "prompts.jsonl"
    write_jsonl(prompts, (Prompt(f"Question {i}: what is {i} plus {i}?", "math", "synthetic", f"g{i}").record()
                            for i in range(5)))
    out = tmp_path / "distill.jsonl"
    first = self_distill(tiny_target, prompts, out, max_new_tokens=6, batch_size=2, limit=3, progress=False,
                           dtype="float32")
    assert first["done"] == 3 and len(out.read_text().splitlines()) == 3
    # A run killed mid-write leaves a torn last line: it is dropped, and its prompt is not counted as done.
    with open(out, "a") as fh:
        fh.write('{"messages": [{"role": "user", "content": "Question 3')
    second = self_distill(tiny_target, prompts, out, max_new_tokens=6, batch_size=2, progress=False,
                            dtype="float32")
    assert second["already_done"] == 3 and second["done"] == 2
    third = self_distill(tiny_target, prompts, out, max_new_tokens=6, batch_size=2, progress=False,
                           dtype="float32")
    assert third["done"] == 0 and third["already_done"] == 5
    rows = load_conversations(out)
    assert len(rows) == 5 and len({r["id"] for r in rows}) == 5
    for r in rows:
        assert [m["role"] for m in r["messages"]] == ["user", "assistant"]
        assert r["finish_reason"] in ("stop", "length") and 1 <= r["completion_tokens"] <= 6
        assert r["id"] == prompt_id(r["messages"][:-1])


def test_self_distill_stores_the_features_train_would_compute(tmp_path, tiny_target):
    """``distill --feature-cache``: the features read off the decoder's forward passes are those the trainer's
    extractor computes from the training tokenisation (the template's end of turn included), under the keys
    the trainer looks up, so ``train`` finds every sequence cached."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from sglang_domino.training.batching import load_examples
    from sglang_domino.training.features import FeatureCache, TargetFeatureExtractor

    prompts = tmp_path / "prompts.jsonl"
    write_jsonl(prompts, (Prompt(f"Question {i}: what is {i} plus {i}? Explain recursion.", "math", "synthetic",
                                     f"g{i}").record() for i in range(5)))
    out, fc = tmp_path / "distill.jsonl", tmp_path / "fc"
    summary = self_distill(tiny_target, prompts, out, max_new_tokens=12, batch_size=2, progress=False,
                             dtype="float32", feature_cache=fc, feature_layers=[0], feature_max_len=640)
    assert summary["done"] == 5 and summary["feature_sequences"] == 5
    # (The random target rarely says eos: responses end at the cap, so each sequence's tail -- the last token,
    # never fed back, and the template's end of turn -- comes from SlotGreedyDecoder._extend.)

    tokenizer = AutoTokenizer.from_pretrained(tiny_target)
    examples = load_examples(out, lambda: tokenizer, 640)
    model = AutoModelForCausalLM.from_pretrained(tiny_target, dtype=torch.float32).eval()
    extractor = TargetFeatureExtractor(model, [0])
    fingerprint = FeatureCache.fingerprint(tiny_target, [0], "float32", "float32")

    def no_recompute():
        raise AssertionError("a distilled sequence was missing from the feature cache")

    cache = FeatureCache.open(fc, examples, fingerprint, torch.float32, no_recompute, progress=False)
    for i, example in enumerate(examples):
        expected = extractor(example.input_ids[None])[0]
        assert cache.get(i).shape == expected.shape
        torch.testing.assert_close(cache.get(i), expected, atol=1e-4, rtol=1e-4)


def test_pack_dedups_against_shipped_parts_and_splits_validation(tmp_path):
    """`data pack`: torn lines dropped, prompts already shipped (or repeated) skipped, every N-th to validation."""
    import gzip

    def conv(i: int) -> dict:
        return {"messages": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": f"a{i}"}],
                "id": f"id{i}", "completion_tokens": 10 + i}

    shipped = tmp_path / "part1.jsonl.gz"
    with gzip.open(shipped, "wt") as fh:
        fh.write(json.dumps(conv(0)) + "\n")
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    a.write_text("".join(json.dumps(conv(i)) + "\n" for i in range(0, 5)) + '{"messages": [tor')
    b.write_text("".join(json.dumps(conv(i)) + "\n" for i in range(3, 9)))
    out, val = tmp_path / "part2.jsonl.gz", tmp_path / "val.jsonl.gz"
    summary = pack_conversations([a, b], out, exclude=[shipped], val_out=val, val_every=3)
    train_ids = [c["id"] for c in load_conversations(out)]
    val_ids = [c["id"] for c in load_conversations(val)]
    assert val_ids == ["id3", "id6"]  # kept order id1..id8: every 3rd
    assert train_ids == ["id1", "id2", "id4", "id5", "id7", "id8"]
    assert summary == {"conversations": 6, "response_tokens": sum(10 + i for i in (1, 2, 4, 5, 7, 8)),
                       "validation": 2}


def test_pending_prompts_skips_answered_ones_and_filters_kinds(tmp_path):
    """`data pending`: the next distillation's input is train.jsonl minus every prompt a part answers."""
    import gzip

    prompts = [Prompt(f"question {i}?", "chat" if i % 2 else "writing", "synthetic-2", f"g{i}") for i in range(6)]
    train = tmp_path / "train.jsonl"
    write_jsonl(train, (p.record() for p in prompts))
    part = tmp_path / "part1.jsonl.gz"
    with gzip.open(part, "wt") as fh:  # a shipped part answering prompts 1 and 2 (ids as `distill` writes them)
        for i in (1, 2):
            msgs = prompts[i].record()["messages"]
            fh.write(json.dumps({"messages": msgs + [{"role": "assistant", "content": "a"}],
                                 "id": prompt_id(msgs)}) + "\n")
    out = tmp_path / "pending.jsonl"
    assert pending_prompts(train, out, exclude=[part]) == {"pending": 4, "pending_chat": 2, "pending_writing": 2}
    assert [r["group"] for _, r in read_jsonl(out)] == ["g0", "g3", "g4", "g5"]
    assert pending_prompts(train, out, exclude=[part], kinds=["chat"])["pending"] == 2
    assert [r["group"] for _, r in read_jsonl(out)] == ["g3", "g5"]


def test_shipped_distilled_parts_never_contain_a_heldout_prompt():
    """Every shipped self-distilled conversation (training and validation parts) was asked a prompt that is not one
    of the held-out evaluation prompts, and no prompt is shipped twice."""
    parts = sorted((Path(__file__).resolve().parents[2] / "data" / "distilled").glob("*.jsonl.gz"))
    assert len(parts) >= 2
    held = {normalise(p.text) for p in read_heldout(HELDOUT_PROMPTS)}
    convs = [(part.name, c) for part in parts for c in load_conversations(part)]
    ids = [answered_key(c) for _, c in convs]
    assert len(ids) == len(set(ids))
    for name, conv in convs:
        assert normalise(conv["messages"][0]["content"]) not in held, (name, conv["messages"][0]["content"])
