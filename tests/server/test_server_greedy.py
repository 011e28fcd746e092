"""Greedy Domino serving is lossless: token for token the plain SGLang server's output, under concurrency.

Both servers are the same ``sglang.launch_server`` in float32; the Domino one adds only
``--speculative-algorithm domino --speculative-draft-model-path D``. Requests of mixed prompt lengths are sent
concurrently, with max_tokens, stop strings, stop_token_ids and EOS; the draft log shows that some of them end
*inside* an accepted block (the case where the scheduler must cut a multi-token step).
"""

from __future__ import annotations

import random
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

pytestmark = [pytest.mark.server, pytest.mark.timeout(900)]

NUM_PROMPTS = 18
MAX_TOKENS = [13, 21, 29, 37, 45, 50, 17, 33, 41, 64, 11, 26, 55, 19, 48, 23, 35, 60]


def make_prompts(tokenizer, n: int = NUM_PROMPTS, seed: int = 0) -> list[list[int]]:
    """Prompt token ids of mixed lengths (2 .. ~300 tokens), from the tokenizer's training text."""
    from sglang_domino.benchmarks import tiny_pair

    rng = random.Random(seed)
    ids = tokenizer(tiny_pair._CORPUS * 6, add_special_tokens=False)["input_ids"]
    lengths = [2, 3, 5, 8, 12, 17, 25, 33, 48, 64, 80, 100, 130, 160, 200, 240, 280, 300][:n]
    rng.shuffle(lengths)
    out = []
    for length in lengths:
        start = rng.randrange(0, len(ids) - length)
        out.append(ids[start : start + length])
    return out


def run_concurrently(server, payloads: list[dict]) -> list[dict]:
    with ThreadPoolExecutor(max_workers=len(payloads)) as pool:
        return list(pool.map(lambda p: server.generate(**p), payloads))


def run_both(servers, payloads: list[dict]) -> tuple[list[dict], list[dict]]:
    with ThreadPoolExecutor(max_workers=2) as pool:
        plain = pool.submit(run_concurrently, servers["plain"], [dict(p, rid=f"plain-{p['rid']}") for p in payloads])
        domino = pool.submit(run_concurrently, servers["domino"], payloads)
        return plain.result(), domino.result()


def ended_inside_accepted_block(server, rid: str, completion_tokens: int) -> bool:
    """Whether the request's last token was an *accepted draft* of a verify step (not its bonus token).

    Token 1 comes from prefill; each verify step emits accept+1 tokens (drafts then bonus). Trailing records
    (an overlap-scheduled step after the finish) are ignored.
    """
    emitted = 1
    for rec in server.draft_records(rid):
        step = rec["accept"] + 1
        if emitted + step >= completion_tokens:
            used = completion_tokens - emitted
            return 0 < used <= rec["accept"]
        emitted += step
    return False


@pytest.fixture(scope="module")
def tokenizer(tiny):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny.target)


@pytest.fixture(scope="module")
def base_round(servers, tokenizer):
    prompts = make_prompts(tokenizer)
    payloads = [
        {"rid": f"base-{i}", "input_ids": p,
         "sampling_params": {"temperature": 0, "max_new_tokens": MAX_TOKENS[i], "ignore_eos": i % 3 == 0}}
        for i, p in enumerate(prompts)
    ]
    plain, domino = run_both(servers, payloads)
    return prompts, payloads, plain, domino


def test_greedy_equal_mixed_lengths_concurrent(base_round, servers) -> None:
    prompts, payloads, plain, domino = base_round
    assert len({len(p) for p in prompts}) >= 12, "prompt lengths must be mixed"
    for payload, a, b in zip(payloads, plain, domino):
        assert b["output_ids"] == a["output_ids"], payload["rid"]
        assert b["text"] == a["text"], payload["rid"]
        assert b["meta_info"]["finish_reason"] == a["meta_info"]["finish_reason"], payload["rid"]
    # Speculation really happened: fewer verify steps than tokens, and blocks were accepted.
    tokens = sum(b["meta_info"]["completion_tokens"] for b in domino)
    verifies = sum(b["meta_info"]["spec_verify_ct"] for b in domino)
    assert verifies < tokens / 2, (verifies, tokens)
    # max_tokens that end inside an accepted block
    inside = [p["rid"] for p, b in zip(payloads, domino)
              if b["meta_info"]["finish_reason"]["type"] == "length"
              and ended_inside_accepted_block(servers["domino"], p["rid"], b["meta_info"]["completion_tokens"])]
    assert inside, "no max_tokens request ended inside an accepted block"


def _stop_string(text: str, start: int) -> str | None:
    """A 3-character printable substring starting at or after ``start`` that does not occur earlier."""
    for k in range(start, len(text) - 3):
        s = text[k : k + 3]
        if s.isprintable() and s.strip() == s and s and text.find(s) == k:
            return s
    return None


def test_stop_strings_and_stop_token_ids_inside_blocks(base_round, servers) -> None:
    prompts, payloads, plain, _ = base_round
    stop_payloads = []
    for i, (payload, ref) in enumerate(zip(payloads, plain)):
        text, ids = ref["text"], ref["output_ids"]
        if len(ids) < 12:
            continue
        sp = {"temperature": 0, "max_new_tokens": 64}
        if i % 2 == 0:
            stop = _stop_string(text, len(text) // 3)
            if stop is None:
                continue
            sp["stop"] = [stop]
        else:
            k = len(ids) // 2
            if ids[k] in ids[:k]:
                continue
            sp["stop_token_ids"] = [ids[k]]
        stop_payloads.append({"rid": f"stop-{i}", "input_ids": payload["input_ids"], "sampling_params": sp})
    assert len(stop_payloads) >= 8
    plain_out, domino_out = run_both(servers, stop_payloads)
    inside = 0
    for payload, a, b in zip(stop_payloads, plain_out, domino_out):
        assert b["output_ids"] == a["output_ids"], payload
        assert b["text"] == a["text"], payload
        assert b["meta_info"]["finish_reason"] == a["meta_info"]["finish_reason"], payload
        if b["meta_info"]["finish_reason"]["type"] == "stop":
            inside += ended_inside_accepted_block(servers["domino"], payload["rid"],
                                                  b["meta_info"]["completion_tokens"])
    assert inside >= 1, "no stop string / stop token ended inside an accepted block"


class OfflineDrafts:
    """The offline rollout of the tiny pair, to compare the server's logged draft blocks with."""

    def __init__(self, tiny) -> None:
        from transformers import AutoModelForCausalLM

        from sglang_domino import load_drafter

        self.target = AutoModelForCausalLM.from_pretrained(tiny.target, dtype=torch.float32).eval()
        self.drafter = load_drafter(tiny.drafter, dtype=torch.float32)
        self.embed = self.target.get_input_embeddings().weight
        self.lm_head = self.target.get_output_embeddings().weight

    def count_mismatches(self, sequence: list[int], records: list[dict], rid: str) -> tuple[int, int]:
        """(checked, mismatched) draft blocks of ``records`` against the rollout on ``sequence[:pos]``."""
        from sglang_domino import draft_from_hidden
        from sglang_domino.offline import target_features

        cfg = self.drafter.config
        with torch.no_grad():  # causal target: one forward gives the context features of every prefix
            hs = self.target(torch.tensor([sequence]), output_hidden_states=True).hidden_states
            features = target_features(hs, cfg.target_layer_ids)
        checked = mismatched = 0
        for rec in records:
            pos = rec["pos"]
            if pos >= len(sequence):
                continue  # an overlap-scheduled step after the request finished
            assert rec["bonus"] == sequence[pos], (rid, pos)
            with torch.no_grad():
                cache = self.drafter.new_cache()
                self.drafter.append_context(cache, features[:, :pos])
                bonus = torch.tensor([rec["bonus"]])
                hidden = self.drafter.draft_block_hidden(cache, bonus, self.embed, len(rec["drafts"]) + 1)  # its width
                block = draft_from_hidden(hidden, bonus, self.embed, self.lm_head, self.drafter.head_weights(),
                                          shift_label=cfg.shift_label, pure_draft_prefix_len=cfg.pure_draft_prefix_len)
            checked += 1
            mismatched += block.tokens[0].tolist() != rec["drafts"]
        return checked, mismatched


def test_drafts_equal_offline_reference(base_round, servers, tiny) -> None:
    """Every logged draft block of a few requests equals the offline rollout on the same context."""
    prompts, payloads, _, domino = base_round
    offline = OfflineDrafts(tiny)
    checked = mismatched = 0
    for payload, out in list(zip(payloads, domino))[:6]:
        c, m = offline.count_mismatches(payload["input_ids"] + out["output_ids"],
                                        servers["domino"].draft_records(payload["rid"]), payload["rid"])
        checked, mismatched = checked + c, mismatched + m
    assert checked >= 20
    assert mismatched == 0, f"{mismatched}/{checked} draft blocks differ from the offline rollout"


def test_accept_lengths_equal_offline_loop(base_round, servers, tiny) -> None:
    """The server's per-step accept lengths are those of sglang_domino.offline.speculative_generate."""
    from transformers import AutoModelForCausalLM

    from sglang_domino import load_drafter
    from sglang_domino.offline import speculative_generate

    prompts, payloads, _, domino = base_round
    target = AutoModelForCausalLM.from_pretrained(tiny.target, dtype=torch.float32).eval()
    drafter = load_drafter(tiny.drafter, dtype=torch.float32)
    for payload, out in list(zip(payloads, domino))[:3]:
        n = out["meta_info"]["completion_tokens"]
        ref = speculative_generate(target, drafter, torch.tensor([payload["input_ids"]]), n,
                                   eos_token_ids=[] if payload["sampling_params"]["ignore_eos"] else [tiny.eos_token_id],
                                   draft_logits_dtype="float32")  # as the server fixture pins it
        assert ref.tokens == out["output_ids"]
        server_steps = [r["accept"] + 1 for r in servers["domino"].draft_records(payload["rid"])]
        # Compare the steps that were fully used; the last one may be cut by max_tokens/EOS.
        full = len(ref.accept_lengths) - 1
        assert server_steps[:full] == ref.accept_lengths[:full], payload["rid"]
