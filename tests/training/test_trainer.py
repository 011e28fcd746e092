"""End-to-end training on a tiny random Llama target: learning, exact resume, skipping, caching, export parity."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import random_drafter

from sglang_domino.checkpoint import load_drafter
from sglang_domino.offline import target_features
from sglang_domino.rollout import greedy_rollout
from sglang_domino.training.batching import BatchStream, TrainBatch, load_examples
from sglang_domino.training.cli import parse_train_args
from sglang_domino.training.drafter_build import build_drafter, init_output_norm_from_target
from sglang_domino.training.errors import TrainingError
from sglang_domino.training.features import FeatureCache, TargetFeatureExtractor
from sglang_domino.training.loss import teacher_forced_logits
from sglang_domino.training.pipeline import train
from sglang_domino.training.tokenization import tokenizer_loader
from sglang_domino.training.trainer import DominoTrainer, FrozenTarget, forward_blocks
from tiny_chat_target import build_tokenizer

VOCAB, MASK = 64, 5
CYCLE = [10, 11, 12, 13, 14, 15, 16]


# Tiny tensors: one thread avoids OpenMP spin contention on a shared 2-core machine.
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def ws(tmp_path_factory) -> Path:
    """A 4-layer random Llama target (fp32, tied embeddings) and 32 pre-tokenised conversations.

    Each conversation: a random "prompt" (not loss-masked) then a "response" walking a 7-token cycle from a
    random phase, so the next tokens follow from the anchor token: learnable in a few dozen steps.
    """
    from transformers import LlamaConfig, LlamaForCausalLM

    root = tmp_path_factory.mktemp("train")
    cfg = LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=4,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                      tie_word_embeddings=True, rope_theta=10000.0)
    torch.manual_seed(0)
    LlamaForCausalLM(cfg).save_pretrained(root / "target")
    rng = random.Random(0)
    with (root / "data.jsonl").open("w") as fh:
        for _ in range(32):
            prompt = [rng.randrange(20, 60) for _ in range(rng.randrange(3, 8))]
            phase, n = rng.randrange(7), rng.randrange(24, 40)
            response = [CYCLE[(phase + j) % 7] for j in range(n)]
            fh.write(json.dumps({"input_ids": prompt + response,
                                 "loss_mask": [0] * len(prompt) + [1] * len(response)}) + "\n")
        fh.write(json.dumps({"input_ids": [1, 2, 3], "loss_mask": [0, 1, 1]}) + "\n")  # too short: dropped
    return root


def _args(ws: Path, out: str, *extra: str):
    base = (f"--target {ws / 'target'} --data {ws / 'data.jsonl'} --out {ws / out} --block-size 8 --num-layers 1 "
            f"--target-layer-ids 1,2 --mask-token-id {MASK} --emb-dim 16 --gru-hidden-dim 16 --target-dtype float32 "
            "--batch-size 4 --blocks-per-seq 2 --no-progress").split()
    return parse_train_args(base + list(extra))


def _metrics(ws: Path, out: str) -> list[dict]:
    return [json.loads(line) for line in (ws / out / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def trained(ws) -> dict:
    """A 50-step run with the feature cache, shift_label=True."""
    summary = train(_args(ws, "run", "--max-steps", "50", "--lr", "1e-2", "--save-every", "0", "--shift-label",
                          "--feature-cache", str(ws / "fcache")))
    return summary


def _load_target(ws: Path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(ws / "target"), dtype=torch.float32).eval()


# -------------------------------------------------------------------------------------------- learning
def test_loss_decreases_and_metrics_logged(ws, trained):
    rows = _metrics(ws, "run")
    assert [r["step"] for r in rows] == list(range(1, 51))
    assert trained["dropped_sequences"] == 1 and trained["num_sequences"] == 32
    first, last = rows[0], rows[-5:]
    mean_last = sum(r["loss"] for r in last) / len(last)
    assert mean_last < 0.7 * first["loss"], (first["loss"], mean_last)
    assert sum(r["accuracy"] for r in last) / 5 > first["accuracy"] + 0.2
    for key in ("loss", "final_loss", "base_loss", "accuracy", "base_accuracy", "accept_len", "base_accept_len",
                "lambda", "lr", "grad_norm", "skipped_batches"):
        assert key in first
    # λ: 1 at step 0, linear to 0 at half of the 50 steps.
    assert rows[0]["lambda"] == 1.0
    assert rows[10]["lambda"] == pytest.approx(1 - 10 / 25)
    assert rows[25]["lambda"] == 0.0 and rows[-1]["lambda"] == 0.0
    assert all(r["accept_len"] >= 1.0 for r in rows)


# --------------------------------------------------------------------------------------------- resume
def test_resume_reproduces_the_uninterrupted_run(ws):
    common = ("--max-steps", "6", "--save-every", "3", "--lr", "5e-3", "--warmup-steps", "2")
    train(_args(ws, "full", *common))
    stopped = train(_args(ws, "resumed", *common, "--stop-at-step", "3"))
    assert stopped["stopped_at"] == 3
    assert (ws / "resumed" / "ckpt" / "step_00000003.pt").is_file()
    train(_args(ws, "resumed", *common, "--resume"))
    full, resumed = _metrics(ws, "full"), _metrics(ws, "resumed")
    assert [r["step"] for r in resumed] == list(range(1, 7))
    for a, b in zip(full, resumed):
        a.pop("step_time"), b.pop("step_time")
        assert a == b  # exact, fp32: step 4's loss is the uninterrupted run's to the last bit
    wa = load_file(str(ws / "full" / "drafter" / "model.safetensors"))
    wb = load_file(str(ws / "resumed" / "drafter" / "model.safetensors"))
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def test_shard_window_order_reads_a_few_shards_at_a_time_and_resumes():
    """--shard-window: every example once per epoch, each stretch of the order drawn from `window` shards, the
    same order after a resume, and a checkpoint of another window refused."""
    groups = [f"shard_{i % 7}" for i in range(50)]  # 7 shards of 7-8 examples, interleaved in example order
    stream = BatchStream(50, 4, seed=3, groups=groups, window=2)
    for epoch in (0, 1):
        order = stream._order(epoch)
        assert sorted(order) == list(range(50))
        pos, spans = 0, []
        while pos < 50:  # consecutive windows: the examples of 2 shards, then the next 2, ...
            names = []
            while pos < 50 and (groups[order[pos]] in names or len(names) < 2):
                if groups[order[pos]] not in names:
                    names.append(groups[order[pos]])
                pos += 1
            spans.append(names)
        assert all(len(n) <= 2 for n in spans) and len(spans) == 4  # ceil(7 / 2) windows
    assert stream._order(0) != stream._order(1)
    plain = BatchStream(50, 4, seed=3)
    assert plain._order(0) != stream._order(0) and plain.window == 0
    first = [stream.next_indices() for _ in range(20)]  # crosses into epoch 1
    again = BatchStream(50, 4, seed=3, groups=groups, window=2)
    assert [again.next_indices() for _ in range(20)] == first  # deterministic from the seed
    half = BatchStream(50, 4, seed=3, groups=groups, window=2)
    [half.next_indices() for _ in range(9)]
    resumed = BatchStream(50, 4, seed=3, groups=groups, window=2)
    resumed.load_state_dict(half.state_dict())
    assert [resumed.next_indices() for _ in range(11)] == first[9:]
    with pytest.raises(TrainingError, match="shard-window"):
        BatchStream(50, 4, seed=3, groups=groups, window=3).load_state_dict(half.state_dict())
    with pytest.raises(TrainingError, match="window"):
        BatchStream(50, 4, seed=3).load_state_dict(half.state_dict())


def test_train_with_shard_window_checkpoints_its_window(ws, trained):
    train(_args(ws, "windowed", "--max-steps", "2", "--save-every", "2", "--feature-cache", str(ws / "fcache"),
                "--shard-window", "1"))
    state = torch.load(ws / "windowed" / "ckpt" / "step_00000002.pt", weights_only=False)
    assert state["stream"]["window"] == 1
    with pytest.raises(TrainingError, match="shard-window"):
        train(_args(ws, "windowed", "--max-steps", "2", "--feature-cache", str(ws / "fcache"), "--resume"))
    with pytest.raises(TrainingError, match="needs --feature-cache"):
        train(_args(ws, "unwindowed", "--max-steps", "2", "--shard-window", "4"))


def test_validation_is_logged_and_leaves_training_unchanged(ws):
    """--val-data: teacher-forced held-out metrics at step 0, every --val-every steps and at the end; the
    training trajectory is bit-identical to a run without validation; overlapping data is refused."""
    rng = random.Random(1)
    val = ws / "val.jsonl"
    with val.open("w") as fh:
        for _ in range(6):
            phase, n = rng.randrange(7), rng.randrange(24, 40)
            fh.write(json.dumps({"input_ids": [rng.randrange(20, 60) for _ in range(4)]
                                 + [CYCLE[(phase + j) % 7] for j in range(n)], "loss_mask": [0] * 4 + [1] * n}) + "\n")
    common = ("--max-steps", "5", "--save-every", "0", "--lr", "5e-3")
    train(_args(ws, "noval", *common))
    train(_args(ws, "val", *common, "--val-data", str(val), "--val-every", "2"))
    plain, with_val = _metrics(ws, "noval"), _metrics(ws, "val")
    assert [r["step"] for r in with_val] == [0, 1, 2, 3, 4, 5]
    assert [r["step"] for r in with_val if "val_accept_len" in r] == [0, 2, 4, 5]
    for r in with_val:
        if "val_accept_len" in r:
            assert r["val_accept_len"] >= 1.0 and r["val_base_accept_len"] >= 1.0 and r["val_blocks"] > 0
            # decoding's τ estimate: the harmonic mean, never above the arithmetic one
            assert r["val_decode_tau"] == pytest.approx(1.0 / r["val_inv_accept_len"])
            assert 1.0 <= r["val_decode_tau"] <= r["val_accept_len"] + 1e-9
            assert 1.0 <= r["val_base_decode_tau"] <= r["val_base_accept_len"] + 1e-9
    # The best validation decode τ of the run (step 0 = the starting drafter included) is exported beside it.
    scored = [(r["val_decode_tau"], -r["step"]) for r in with_val if "val_decode_tau" in r]
    best_tau, best_step = max(scored)[0], -max(scored)[1]  # the first step reaching the best value
    best = json.loads((ws / "val" / "best_drafter" / "best.json").read_text())
    assert (best["step"], best["value"], best["metric"]) == (best_step, best_tau, "val_decode_tau")
    assert (ws / "val" / "best_drafter" / "model.safetensors").exists()
    assert json.loads((ws / "val" / "training_summary.json").read_text())["best"] == best
    assert not (ws / "noval" / "best_drafter").exists()  # no validation, nothing to choose by
    for a, b in zip(plain, with_val[1:]):
        a.pop("step_time"), b.pop("step_time")
        assert a == {k: v for k, v in b.items() if not k.startswith("val_")}
    with pytest.raises(TrainingError, match="shares"):
        train(_args(ws, "overlap", *common, "--val-data", str(ws / "data.jsonl")))

    # --validate-only measures an exported drafter on the same blocks and trains nothing.
    with pytest.raises(TrainingError, match="--validate-only needs"):
        train(_args(ws, "vonly", "--validate-only", "--val-data", str(val)))
    result = train(_args(ws, "vonly", "--validate-only", "--val-data", str(val),
                         "--init-from", str(ws / "val" / "drafter")))
    assert json.loads((ws / "vonly" / "validation.json").read_text()) == result
    assert result["val_blocks"] == with_val[-1]["val_blocks"]
    assert 1.0 <= result["val_decode_tau"] <= result["val_accept_len"]
    assert not (ws / "vonly" / "drafter").exists() and not (ws / "vonly" / "metrics.jsonl").exists()
    # ... and leaves a training run's directory as it was (its metrics.jsonl is not reset).
    logged = (ws / "val" / "metrics.jsonl").read_text()
    train(_args(ws, "val", "--validate-only", "--val-data", str(val), "--init-from", str(ws / "val" / "drafter")))
    assert (ws / "val" / "metrics.jsonl").read_text() == logged
    with pytest.raises(TrainingError, match="no --resume"):
        train(_args(ws, "val", "--validate-only", "--val-data", str(val), "--init-from", str(ws / "val" / "drafter"),
                    "--resume"))


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_cuda_device_without_cuda_is_refused(ws):
    with pytest.raises(TrainingError, match="CUDA is not available"):
        train(_args(ws, "nocuda", "--max-steps", "1", "--device", "cuda"))


def test_resume_refuses_a_different_schedule(ws):
    train(_args(ws, "sched", "--max-steps", "4", "--save-every", "2", "--stop-at-step", "2"))
    with pytest.raises(TrainingError, match="steps"):
        train(_args(ws, "sched", "--max-steps", "8", "--save-every", "2", "--resume"))


# ------------------------------------------------------------------------------------------- skipping
def test_batch_without_valid_anchor_is_skipped_and_counted(ws):
    target = _load_target(ws)
    args = _args(ws, "unused", "--shift-label")
    drafter = build_drafter(args, target.config, MASK)
    trainer = DominoTrainer(drafter, FrozenTarget.from_model(target), total_steps=10, blocks_per_seq=2)
    before = {k: v.clone() for k, v in drafter.state_dict().items()}
    ids = torch.tensor([[20, 21, 10, 11, 12, 13, 14, 15, 16, 10, 11, 12]])
    feats = torch.randn(1, 12, 64)
    no_mask = TrainBatch(ids, torch.zeros_like(ids, dtype=torch.bool), torch.tensor([12]), feats)
    assert trainer.train_step(no_mask) is None
    short = TrainBatch(ids[:, :6], torch.ones(1, 6, dtype=torch.bool), torch.tensor([6]), feats[:, :6])
    assert trainer.train_step(short) is None  # shorter than a block
    assert trainer.skipped_batches == 2 and trainer.step == 0
    assert all(torch.equal(before[k], v) for k, v in drafter.state_dict().items())
    lm = torch.zeros_like(ids, dtype=torch.bool)
    lm[:, 2:] = True
    metrics = trainer.train_step(TrainBatch(ids, lm, torch.tensor([12]), feats))
    assert metrics is not None and metrics["skipped_batches"] == 2 and trainer.step == 1


# ----------------------------------------------------------------------------------- target features
@pytest.mark.parametrize("layer_ids", [[0, 2], [1], [3]])
def test_feature_extractor_matches_full_forward(ws, layer_ids):
    """Running only the needed layers gives exactly HF hidden_states[id + 1] (the last layer's is normed)."""
    target = _load_target(ws)
    ids = torch.randint(0, VOCAB, (2, 11), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        full = target_features(target(ids, output_hidden_states=True).hidden_states, layer_ids)
    fast = TargetFeatureExtractor(target, layer_ids)(ids)
    torch.testing.assert_close(fast, full, rtol=1e-5, atol=1e-5)
    assert len(target.model.layers) == 4  # restored


def test_feature_extractor_with_teacher_appends_the_lm_head_input(ws):
    """with_teacher: the same features, then the final-normed hidden whose lm_head product is the target's
    logits (what --distill-weight turns into soft labels); the cache keys it apart from a plain cache."""
    target = _load_target(ws)
    ids = torch.randint(0, VOCAB, (2, 9), generator=torch.Generator().manual_seed(1))
    plain = TargetFeatureExtractor(target, [1, 2])(ids)
    both = TargetFeatureExtractor(target, [1, 2], with_teacher=True)(ids)
    h = target.config.hidden_size
    assert both.shape == (2, 9, 3 * h)
    torch.testing.assert_close(both[..., : 2 * h], plain, rtol=1e-5, atol=1e-5)
    with torch.no_grad():
        logits = target(ids).logits
    torch.testing.assert_close(both[..., 2 * h :] @ target.lm_head.weight.T, logits, rtol=1e-4, atol=1e-4)


def test_distill_weight_trains_from_the_cache_and_validates_with_hard_ce(ws):
    """--distill-weight: the cache holds features + teacher hidden, training runs and learns, validation is the
    same hard CE as without distillation (equal at step 0 from the same init); a run without distillation uses
    that cache as a plain one (the same first step as from a plain cache), and a plain cache cannot serve
    distillation."""
    lines = (ws / "data.jsonl").read_text().splitlines()
    (ws / "distill_train.jsonl").write_text("\n".join(lines[:24]) + "\n")
    (ws / "distill_val.jsonl").write_text("\n".join(lines[24:32]) + "\n")

    def run(out: str, *extra: str) -> dict:
        args = _args(ws, out, "--save-every", "0", "--lr", "1e-2", "--val-data", str(ws / "distill_val.jsonl"), *extra)
        args.data = [str(ws / "distill_train.jsonl")]
        return train(args)

    summary = run("distill", "--max-steps", "30", "--val-every", "30", "--distill-weight", "0.5",
                  "--feature-cache", str(ws / "fcache_distill"))
    rows = _metrics(ws, "distill")
    assert len(rows) == 31 and summary["steps"] == 30
    assert sum(r["accuracy"] for r in rows[-5:]) / 5 > rows[1]["accuracy"] + 0.2
    run("no_distill", "--max-steps", "1", "--feature-cache", str(ws / "fcache_plain"))
    plain = _metrics(ws, "no_distill")
    run("no_distill_teacher_cache", "--max-steps", "1", "--feature-cache", str(ws / "fcache_distill"))
    assert _metrics(ws, "no_distill_teacher_cache")[1]["loss"] == pytest.approx(plain[1]["loss"], rel=1e-6)
    for key in ("val_final_loss", "val_base_loss", "val_accuracy", "val_decode_tau"):
        assert rows[0][key] == pytest.approx(plain[0][key], rel=1e-6), key
    assert rows[1]["loss"] != pytest.approx(plain[1]["loss"], rel=1e-3)  # the training targets do differ
    cache = ws / "fcache_distill"
    shard = torch.load(next(cache.glob("shard_*.pt")), weights_only=True)
    assert next(iter(shard.values())).shape[-1] == 3 * 32  # layers 1, 2 + the teacher hidden (H = 32)
    with pytest.raises(TrainingError, match="without the target's final hidden state"):
        run("distill_bad", "--max-steps", "2", "--distill-weight", "0.5", "--feature-cache", str(ws / "fcache_plain"))
    with pytest.raises(TrainingError, match="distill-weight must be in"):
        run("distill_bad", "--max-steps", "2", "--distill-weight", "1.5")


def _counting_extractor(ext: TargetFeatureExtractor, seen: list[int]):
    """An extractor factory that records how many sequences each target run was given."""

    class Counting:
        def batched(self, seqs, batch_tokens):
            seen.append(len(seqs))
            return ext.batched(seqs, batch_tokens=batch_tokens)

    return Counting


def test_feature_cache_reuse_refusal_and_partial_rebuild(ws, trained):
    target = _load_target(ws)
    examples = [e for e in load_examples(ws / "data.jsonl", None, 1024) if len(e) > 8]
    ext = TargetFeatureExtractor(target, [1, 2])
    fp = FeatureCache.fingerprint(ws / "target", [1, 2], "bfloat16", "float32")

    def no_build():
        raise AssertionError("a complete cache must not run the target")

    cache = FeatureCache.open(ws / "fcache", examples, fp, torch.bfloat16, no_build, progress=False)
    for i in (0, 17, 31):
        expected = ext(examples[i].input_ids[None])[0]
        got = cache.get(i)
        assert got.dtype == torch.bfloat16 and got.shape == expected.shape
        torch.testing.assert_close(got.float(), expected, rtol=2e-2, atol=2e-2)
    other = FeatureCache.fingerprint(ws / "target", [0, 2], "bfloat16", "float32")
    with pytest.raises(TrainingError, match="feature-cache"):
        FeatureCache.open(ws / "fcache", examples, other, torch.bfloat16, no_build, progress=False)
    # A crash mid-build (a shard file gone, its index line left): only that shard's sequences are recomputed.
    small = ws / "fcache_small"
    FeatureCache.open(small, examples, fp, torch.bfloat16, lambda: ext, shard_size=8, progress=False)
    (small / "shard_00002.pt").unlink()
    seen: list[int] = []
    Counting = _counting_extractor(ext, seen)
    rebuilt = FeatureCache.open(small, examples, fp, torch.bfloat16, Counting, shard_size=8, progress=False)
    assert seen == [8]
    for i in range(len(examples)):
        torch.testing.assert_close(rebuilt.get(i), cache.get(i))


def test_feature_cache_grows_with_the_data(ws, trained):
    """More (and reordered) data reuses the cached sequences: the target runs on the new ones only."""
    target = _load_target(ws)
    examples = [e for e in load_examples(ws / "data.jsonl", None, 1024) if len(e) > 8]
    ext = TargetFeatureExtractor(target, [1, 2])
    fp = FeatureCache.fingerprint(ws / "target", [1, 2], "bfloat16", "float32")
    root = ws / "fcache_grow"
    first = FeatureCache.open(root, examples[:10], fp, torch.bfloat16, lambda: ext, shard_size=4, progress=False)
    seen: list[int] = []
    Counting = _counting_extractor(ext, seen)
    more = list(reversed(examples[:16]))
    grown = FeatureCache.open(root, more, fp, torch.bfloat16, Counting, shard_size=4, progress=False)
    assert sum(seen) == 6
    for j, e in enumerate(more):
        expected = ext(e.input_ids[None])[0]
        torch.testing.assert_close(grown.get(j).float(), expected, rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(grown.get(len(more) - 1), first.get(0))


# ---------------------------------------------------------------------------- export / inference parity
def _check_export_parity(ws: Path, out: str) -> None:
    """Exported drafter: training-path hidden == inference-path hidden, and teacher-forced argmax == rollout."""
    target = _load_target(ws)
    drafter = load_drafter(ws / out / "drafter", dtype=torch.float32)
    cfg = drafter.config
    b = cfg.block_size
    embed, lm_head = target.get_input_embeddings().weight.detach(), target.get_output_embeddings().weight.detach()
    ext = TargetFeatureExtractor(target, cfg.target_layer_ids)
    examples = load_examples(ws / "data.jsonl", None, 1024)[:4]
    for e in examples:
        feats = ext(e.input_ids[None])
        for a in (len(e) - b - 3, len(e) - b):
            anchors, keep = torch.tensor([[a]]), torch.tensor([[True]])
            with torch.no_grad():
                h_train = forward_blocks(drafter, embed, feats, e.input_ids[None], anchors, keep)[:, 0]
                cache = drafter.new_cache()
                drafter.append_context(cache, feats[:, :a])
                bonus = e.input_ids[a : a + 1]
                h_inf = drafter.draft_block_hidden(cache, bonus, embed)
                torch.testing.assert_close(h_train, h_inf, rtol=1e-4, atol=1e-4)
                drafts = greedy_rollout(drafter, h_inf, bonus, embed, lm_head)
                block_tokens = torch.cat((bonus[:, None], drafts), dim=1)
                final, _ = teacher_forced_logits(drafter, h_inf, block_tokens, embed, lm_head)
            slots = slice(0, b - 1) if cfg.shift_label else slice(1, b)
            assert torch.equal(final[:, slots].argmax(-1), drafts)


def test_export_loads_and_matches_inference_shift(ws, trained):
    drafter = load_drafter(ws / "run" / "drafter")
    assert drafter.use_head and drafter.config.shift_label and drafter.fc.weight.dtype == torch.bfloat16
    assert drafter.config.mask_token_id == MASK and drafter.config.pure_draft_prefix_len == 1
    _check_export_parity(ws, "run")


def test_export_matches_inference_no_shift(ws):
    train(_args(ws, "noshift", "--max-steps", "8", "--lr", "1e-2", "--save-every", "0", "--no-shift-label",
                "--pure-draft-prefix-len", "2"))
    assert not load_drafter(ws / "noshift" / "drafter").config.shift_label
    _check_export_parity(ws, "noshift")


def test_output_norm_starts_at_the_targets_gain(ws):
    target = _load_target(ws)
    with torch.no_grad():
        target.model.norm.weight.uniform_(0.5, 2.5)
    drafter = random_drafter(hidden_size=target.config.hidden_size)
    init_output_norm_from_target(drafter, target)
    assert torch.equal(drafter.norm.weight, target.model.norm.weight.float())


# ------------------------------------------------------------------------------ backbone / head options
def test_plain_backbone_then_head_on_frozen_backbone(ws):
    train(_args(ws, "plain", "--max-steps", "3", "--save-every", "0", "--no-head"))
    plain = load_drafter(ws / "plain" / "drafter")
    assert not plain.use_head and plain.config.projector_type is None
    train(_args(ws, "headonly", "--max-steps", "3", "--save-every", "0", "--lr", "1e-2",
                "--init-from", str(ws / "plain" / "drafter"), "--freeze-backbone"))
    head = load_drafter(ws / "headonly" / "drafter")
    assert head.use_head
    rows = _metrics(ws, "headonly")
    assert rows[0]["lambda"] == 0.0  # the base term is constant on a frozen backbone: λ0 defaults to 0
    before, after = plain.state_dict(), head.state_dict()
    for name, tensor in before.items():
        assert torch.equal(tensor, after[name]), name  # the backbone did not move
    with pytest.raises(TrainingError, match="no head"):
        train(_args(ws, "bad", "--max-steps", "1", "--save-every", "0", "--no-head", "--freeze-backbone"))


def test_conversations_are_tokenised_with_the_assistant_loss_mask(tmp_path):
    """``{"messages": [...]}`` rows go through tokenization.tokenize_conversation with the target's tokenizer,
    loaded from the target directory (here the offline ChatML stand-in of ``tiny_chat_target.py``, so the test
    needs no prepared embedded target and no earlier test to have prepared one)."""
    target_dir = tmp_path / "target"
    build_tokenizer().save_pretrained(target_dir)
    data = tmp_path / "conv.jsonl"
    messages = [{"role": "user", "content": "Say hi."}, {"role": "assistant", "content": "Hi there, friend!"}]
    data.write_text(json.dumps({"messages": messages}) + "\n"
                    + json.dumps({"messages": messages, "finish_reason": "length"}) + "\n")
    complete, cut = load_examples(data, tokenizer_loader(target_dir), 256)  # the stand-in BPE is wordier
    tok = tokenizer_loader(target_dir)()
    answer = tok.decode(complete.input_ids[complete.loss_mask])
    assert answer.startswith("Hi there, friend!") and answer.endswith("<|im_end|>")
    assert not complete.loss_mask[0]
    # A response cut at max_new_tokens: the end-of-turn token was not the target's, so it is not supervised.
    assert tok.decode(cut.input_ids[cut.loss_mask]) == "Hi there, friend!"


def test_data_from_several_files_gzip_and_a_torn_last_line(tmp_path):
    """--data takes several JSONL / JSONL.gz files in order; a torn last line (a writer killed mid-line) is
    skipped, a bad line elsewhere is an error naming the file and line."""
    import gzip

    rows = [{"input_ids": list(range(i, i + 20))} for i in range(3)]
    plain = tmp_path / "a.jsonl"
    plain.write_text(json.dumps(rows[0]) + "\n" + '{"input_ids": [1, 2')
    packed = tmp_path / "b.jsonl.gz"
    with gzip.open(packed, "wt") as fh:
        fh.write(json.dumps(rows[1]) + "\n" + json.dumps(rows[2]) + "\n")
    got = load_examples([plain, packed], None, 1024)
    assert [e.input_ids.tolist() for e in got] == [r["input_ids"] for r in rows]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"input_ids": [1, 2\n' + json.dumps(rows[0]) + "\n")
    with pytest.raises(TrainingError, match=r"bad.jsonl:1: not JSON"):
        load_examples([packed, bad], None, 1024)
    with pytest.raises(TrainingError, match="no such file"):
        load_examples([tmp_path / "missing.jsonl"], None, 1024)


def test_cli_registers_train():
    from sglang_domino.cli import build_parser

    args = build_parser().parse_args(["train", "--data", "d.jsonl", "--out", "o", "--no-shift-label",
                                      "--target-layer-ids", "1,5,9"])
    assert args.command == "train" and args.target_layer_ids == [1, 5, 9] and args.shift_label is False
    assert args.data == ["d.jsonl"]
    assert args.func.__name__ == "_cmd_train"
