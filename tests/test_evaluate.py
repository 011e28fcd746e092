"""``sglang-domino eval``: τ with and without the head, losslessness, worker processes and resume."""

from __future__ import annotations

import json

import pytest

from sglang_domino.benchmarks import tiny_pair
from sglang_domino.evaluate import evaluate

PROMPTS = [{"prompt": "The quick brown fox"}, {"messages": [{"role": "user", "content": "Name a capital."}]},
           {"prompt": "Numbers: one two three"}, {"prompt": "Python is a programming language"}]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    pair = tiny_pair.build_pair(root / "pair")
    prompts = root / "prompts.jsonl"
    prompts.write_text("".join(json.dumps(p) + "\n" for p in PROMPTS))
    return pair, prompts, root


def _strip_times(result: dict) -> dict:
    """The result without what differs between two runs of the same evaluation: timings, and the provenance's
    clock, command line and commit (a commit may land between the two runs)."""
    rows = [{k: v for k, v in r.items() if not k.startswith("seconds")} for r in result["per_prompt"]]
    provenance = {k: v for k, v in result["provenance"].items() if k not in ("time_utc", "argv", "git")}
    return dict(result, per_prompt=rows, provenance=provenance)


def test_eval_workers_and_resume_give_the_same_result(setup) -> None:
    pair, prompts, root = setup
    one = evaluate(pair.target, pair.drafter, prompts, max_new_tokens=24)
    assert one["num_prompts"] == 4 and one["lossless"] is True
    assert one["tau_domino"] > 1.0 and one["tau_backbone"] >= 1.0
    steps = sum(r["verify_steps_domino"] for r in one["per_prompt"])
    assert one["tau_domino"] == pytest.approx(sum(r["accepted_domino"] for r in one["per_prompt"]) / steps)

    rows = root / "rows.jsonl"
    two = evaluate(pair.target, pair.drafter, prompts, max_new_tokens=24, workers=2, rows_path=rows)
    assert _strip_times(two) == _strip_times(one)
    assert len(rows.read_text().splitlines()) == 1 + 4  # settings line + one row per prompt

    # Interrupted after two prompts (plus a torn line): a rerun computes only the rest, same result.
    lines = rows.read_text().splitlines()
    rows.write_text("\n".join(lines[:3]) + "\n" + lines[3][:10])
    resumed = evaluate(pair.target, pair.drafter, prompts, max_new_tokens=24, rows_path=rows)
    assert _strip_times(resumed) == _strip_times(one)
    assert sorted(json.loads(line)["index"] for line in rows.read_text().splitlines()[1:]) == [0, 1, 2, 3]

    # Different settings never reuse old rows.
    other = evaluate(pair.target, pair.drafter, prompts, max_new_tokens=8, rows_path=rows)
    assert all(r["new_tokens"] <= 8 for r in other["per_prompt"])


def test_eval_with_sampling_measures_point_mass_drafts_too(setup) -> None:
    """At temperature > 0 each prompt also runs greedy drafts verified as point masses (upstream's rule)."""
    pair, prompts, _ = setup
    res = evaluate(pair.target, pair.drafter, prompts, max_new_tokens=16, temperature=0.8, limit=2)
    assert "lossless" not in res
    for name in ("domino", "backbone", "domino_point_mass"):
        steps = sum(r[f"verify_steps_{name}"] for r in res["per_prompt"])
        assert steps > 0
        assert res[f"tau_{name}"] == pytest.approx(sum(r[f"accepted_{name}"] for r in res["per_prompt"]) / steps)
    assert res["tau_ratio_sampled_vs_point_mass"] == pytest.approx(res["tau_domino"] / res["tau_domino_point_mass"])


def test_tau_is_pooled_over_verify_steps_and_per_kind(setup) -> None:
    """Prompts carrying a "kind" get τ per kind; every τ pools accepted tokens over verify steps."""
    from sglang_domino.evaluate import pooled_tau

    rows = [{"new_tokens": 10, "verify_steps_domino": 5, "accepted_domino": 10, "verify_steps_backbone": 8,
             "accepted_backbone": 10},
            {"new_tokens": 6, "verify_steps_domino": 1, "accepted_domino": 6, "verify_steps_backbone": 2,
             "accepted_backbone": 6}]
    pooled = pooled_tau(rows, sampled=False)
    assert pooled == pytest.approx({"new_tokens": 16, "tau_domino": 16 / 6, "tau_backbone": 16 / 10, "tau_ratio": 10 / 6})

    pair, _, root = setup
    kinds = root / "kinds.jsonl"
    kinds.write_text("".join(json.dumps(dict(p, kind=k)) + "\n" for p, k in zip(PROMPTS, ["a", "b", "a", "b"])))
    res = evaluate(pair.target, pair.drafter, kinds, max_new_tokens=8)
    assert sorted(res["by_kind"]) == ["a", "b"] and res["by_kind"]["a"]["num_prompts"] == 2
    for kind, summary in res["by_kind"].items():
        assert summary == {"num_prompts": 2, **pooled_tau([r for r in res["per_prompt"] if r["kind"] == kind], False)}
