"""This project's templated prompts: the first sets still select the shipped held-out prompts; the later sets
add training prompts that share nothing with them."""

from __future__ import annotations

import re

from sglang_domino.embedded import HELDOUT_PROMPTS
from sglang_domino.training.corpus import read_heldout, select_heldout, split_train
from sglang_domino.training.sources import Prompt, chat_prompts, math_prompts, normalise, writing_prompts
from sglang_domino.training import templates as T


def _key(p: Prompt) -> tuple[str, str, str, str]:
    return (p.text, p.kind, p.source, p.group)


def test_first_sets_still_select_the_shipped_heldout_prompts():
    """Adding template sets must not move the held-out selection: per (kind, source), the shipped writing and
    math prompts are exactly what ``select_heldout`` picks from the templates now."""
    shipped = [p for p in read_heldout(HELDOUT_PROMPTS) if p.source == "synthetic"]
    assert {p.kind for p in shipped} == {"writing", "math"}
    quotas = {("writing", "synthetic"): 8, ("math", "synthetic"): 8}
    picked = select_heldout(math_prompts() + writing_prompts() + chat_prompts(), seed=0, quotas=quotas)
    assert sorted(map(_key, picked)) == sorted(map(_key, shipped))


def test_second_sets_are_disjoint_from_the_first_and_from_heldout():
    assert not set(T._TOPICS_2) & set(T._TOPICS)
    assert not set(T._ACTIVITIES_2) & set(T._ACTIVITIES)
    extra = [p for p in writing_prompts() if p.source == "synthetic-2"] + chat_prompts()
    assert {p.source for p in extra} == {"synthetic-2"}
    assert len(extra) > 2500 and len({normalise(p.text) for p in extra}) == len(extra)
    held = read_heldout(HELDOUT_PROMPTS)
    assert len(split_train(extra, held)) == len(extra)  # nothing dropped: no shared text, group or passage
    # Nor any subject of the held-out chat trivia (a paraphrase would not share the normalised text).
    chat_text = " ".join(normalise(p.text) for p in extra if p.kind == "chat")
    for subject in ("hobbit", "computer are you", "islamabad", "pakistan", "lantern", "priest", "beatles", "apgar",
                    "gossip", "bigger boat"):
        assert subject not in chat_text, subject


def test_templates_are_well_formed():
    for text in T.chat_questions() + T.writing_tasks_extra():
        assert text[-1] in ".?!" and "{" not in text and "  " not in text, text
        assert re.match(r"[A-Z]", text), text
