"""Sampling audit: Domino's sampled tokens against the target's exact distribution and against plain SGLang, at scale.

The large version of ``tests/server/test_server_sampling.py``. It starts real servers with the launch helper of
``sglang-domino serve`` (:func:`sglang_domino.server.launch.build_command`, so the serve defaults: CPU default dtype,
verify width, adaptive width rule):

* ``plain``: the target alone (``--no-speculation``'s command);
* ``domino``: Domino as served by default (on CPU: the adaptive width rule, which may decode wide batches at plain
  width -- the ``token-2 drafted`` column says how many token-2 steps actually drafted);
* ``domino_always``: the same with ``SGLANG_DOMINO_MAX_SPECULATIVE_BATCH=none`` (drafting at every batch size).

For each setting (T=1; T=0.7 + top-p 0.9; T=1 + top-k 20; T=1 + min-p 0.1) it draws ``--samples`` (first token,
second token) pairs per server through ``n=--per-request`` parallel-sampling requests and reports:

* chi-square p-values against the exact target (transformers, float32, SGLang's filtering via
  :func:`sglang_domino.sampling.filtered_probs`) for token 1 (prefill), token 2 (the first speculative verify step),
  and token 2 given each of the most likely token-1 values;
* two-sample chi-square p-values Domino vs plain SGLang (tokens 1 and 2);
* τ, the mean accepted length: Σ completion_tokens / Σ meta_info.spec_verify_ct over ``--tau-requests`` single
  requests of ``--tau-tokens`` tokens (one in flight, the adaptive server's drafting regime);
* the detectable shift: the smallest ε of token-2 probability moved from its most likely value to the second most
  likely that the token-2 test detects with 95 % probability at ``--alpha`` with this many samples.

Under a correct verifier every p-value is uniform on [0, 1]; with the table's ~40 p-values a few below 0.05 are
expected, one below 1e-4 is not. Progress is kept in ``JSON.rows.jsonl`` (one row per server and setting): a
rerun with the same arguments resumes; a partial JSON and table are rewritten after every row.

    python benchmarks/sampling_audit.py --json benchmarks/results/sampling_audit.json --samples 4000

``--pair embedded`` audits the embedded SmolLM2-135M pair; its vocabulary is too large for the exact token-2
marginal, so token 2 is tested conditionally on token 1 lying among the most likely values (the
``token-1 mass covered`` field), which is still exact for those draws.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Optional

import numpy as np
import requests

ROOT = Path(__file__).resolve().parents[1]
from sglang_domino.benchmarks import sampling_stats as st

from sglang_domino.settings import MAX_SPECULATIVE_BATCH_ENV
from sglang_domino.resume import append_row, read_rows, start_rows
from sglang_domino.benchmarks.serving import Server as ServeProcess
from sglang_domino.server.process import free_port

SERVERS = ("plain", "domino", "domino_always")
CONDITIONAL_TOP = 3
MIN_CONDITIONAL_DRAWS = 30
EMBEDDED_PROMPT = "The capital of France is"
EMBEDDED_MAX_TOKEN1_ROWS = 256  # token-1 values whose token-2 distribution is computed (one forward each)


class Server(ServeProcess):
    """``sglang-domino serve`` on loopback (:class:`serving.Server`), with a draft log and the audit's requests."""

    def __init__(self, name: str, target: Path, draft: Optional[Path], log_dir: Path, extra: list[str],
                 env: dict[str, str]):
        self.draft_log = log_dir / f"sampling-audit-{name}.drafts.jsonl" if draft is not None else None
        env = {"TOKENIZERS_PARALLELISM": "false", **env}
        if self.draft_log is not None:
            self.draft_log.unlink(missing_ok=True)
            env["SGLANG_DOMINO_DRAFT_LOG"] = str(self.draft_log)
        super().__init__(f"sampling-audit-{name}", target, draft, free_port(), extra, log_dir, env)
        self.name = name

    def generate(self, timeout: float = 600, **payload) -> Any:
        r = requests.post(self.url + "/generate", json=payload, timeout=timeout)
        r.raise_for_status()
        return r.json()

    def draft_log_lines(self) -> int:
        if self.draft_log is None or not self.draft_log.exists():
            return 0
        return len(self.draft_log.read_text().splitlines())

    def token2_drafting(self, start: int, prompt: list[int], sp: dict) -> Optional[list[int]]:
        """[verify rows with drafts, all verify rows] among the draft-log rows after line ``start`` that decided
        token 2 (first verify step: committed length = prompt length) of a request at this temperature. Parallel
        samples get fresh rids from SGLang, hence the log offset rather than a rid match."""
        if self.draft_log is None or not self.draft_log.exists():
            return None
        rows = [json.loads(line) for line in self.draft_log.read_text().splitlines()[start:] if line.strip()]
        rows = [r for r in rows if r.get("prompt_len") == len(prompt) and r["pos"] == len(prompt)
                and r.get("sampling") and abs(r["sampling"]["temperature"] - sp["temperature"]) < 1e-6]
        return [sum(bool(r["drafts"]) for r in rows), len(rows)]


# ------------------------------------------------------------------------------------------------ the pair


def tiny_pair(cache: Path) -> tuple[Path, Path, list[int]]:
    from sglang_domino.benchmarks import tiny_pair as tp

    root = cache / "tiny_pair"
    if not (root / "drafter" / "model.safetensors").is_file():
        tp.build_pair(root)
    return root / "target", root / "drafter", list(st.PROMPT)


def embedded_pair() -> tuple[Path, Path, list[int]]:
    from transformers import AutoTokenizer

    from sglang_domino.embedded import prepare_embedded_pair

    pair = prepare_embedded_pair()
    ids = AutoTokenizer.from_pretrained(pair.target)(EMBEDDED_PROMPT)["input_ids"]
    return Path(pair.target), Path(pair.draft), list(ids)


def exact_subset(target: Path, prompt: list[int], settings: dict[str, dict], max_rows: int) -> dict[str, st.Exact]:
    """Like :func:`sampling_stats.exact_distributions`, computing p(token 2 | token 1 = t) only for the ``max_rows``
    most likely t (other rows stay 0: token-2 tests then condition on token 1 being among those)."""
    import torch
    from transformers import AutoModelForCausalLM

    from sglang_domino.sampling import SamplingParams, filtered_probs

    model = AutoModelForCausalLM.from_pretrained(target, dtype=torch.float32).eval()
    out = {}
    with torch.no_grad():
        logits1 = model(torch.tensor([prompt])).logits[0, -1:]
        vocab = logits1.shape[-1]
        for name, sp in settings.items():
            p1 = filtered_probs(logits1, SamplingParams.uniform(1, **sp))[0]
            rows = [int(t) for t in torch.argsort(p1, descending=True)[:max_rows] if p1[t] > 0]
            p2_given = np.zeros((vocab, vocab))
            for i in range(0, len(rows), 32):
                chunk = rows[i:i + 32]
                batch = torch.cat((torch.tensor(prompt).expand(len(chunk), -1), torch.tensor(chunk)[:, None]), 1)
                probs = filtered_probs(model(batch).logits[:, -1], SamplingParams.uniform(len(chunk), **sp))
                p2_given[chunk] = probs.double().numpy()
            out[name] = st.Exact(p1.double().numpy(), p2_given)
    return out


# ------------------------------------------------------------------------------------------------ analysis


def analyse(exact: st.Exact, pairs: np.ndarray, plain: Optional[np.ndarray], alpha: float) -> dict[str, Any]:
    covered = exact.p2_given.sum(1) > 0  # token-1 values whose token-2 row is known (all of them for the tiny pair)
    mass = float(exact.p1[covered].sum())
    p2 = exact.p1 * covered @ exact.p2_given / mass
    keep = covered[pairs[:, 0]]

    def gof(tokens, probs):
        try:
            return st.goodness_of_fit(tokens, probs)
        except AssertionError:
            return 0.0

    row: dict[str, Any] = {
        "samples": int(len(pairs)),
        "token1_mass_covered": mass,
        "p_token1_vs_exact": gof(pairs[:, 0], exact.p1),
        "p_token2_vs_exact": gof(pairs[keep, 1], p2),
        "conditional": [],
        "detectable_shift_token2": st.detectable_shift(p2, int(keep.sum()), alpha),
    }
    for t in np.argsort(-exact.p1, kind="stable")[:CONDITIONAL_TOP]:
        given = pairs[pairs[:, 0] == t, 1]
        if covered[t] and len(given) >= MIN_CONDITIONAL_DRAWS:
            row["conditional"].append({"token1": int(t), "draws": int(len(given)),
                                       "p_vs_exact": gof(given, exact.p2_given[t]),
                                       "detectable_shift": st.detectable_shift(exact.p2_given[t], len(given), alpha)})
    if plain is not None:
        row["p_token1_vs_plain"] = st.two_sample(pairs[:, 0], plain[:, 0])
        row["p_token2_vs_plain"] = st.two_sample(pairs[:, 1], plain[:, 1])
    return row


def measure_tau(server: Server, prompt: list[int], sp: dict, n_requests: int, tokens: int) -> Optional[dict]:
    completion, verify = 0, 0
    for _ in range(n_requests):
        out = server.generate(input_ids=prompt, sampling_params=dict(sp, max_new_tokens=tokens, ignore_eos=True))
        meta = out["meta_info"]
        completion += int(meta["completion_tokens"])
        verify += int(meta.get("spec_verify_ct") or 0)
    if verify == 0:
        return None
    return {"tau": completion / verify, "completion_tokens": completion, "spec_verify_ct": verify,
            "requests": n_requests, "max_new_tokens": tokens}


def fmt_p(p: Optional[float]) -> str:
    if p is None:
        return "–"
    return f"{p:.3f}" if p >= 1e-3 else f"{p:.1e}"


def markdown_table(rows: list[dict[str, Any]]) -> str:
    head = ["setting", "server", "samples", "p tok1 vs exact", "p tok2 vs exact", "p tok2 given tok1 vs exact",
            "p tok1 / tok2 vs plain", "τ", "token-2 drafted", "detectable ε (tok2, 95 % power)"]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * 2 + " ---: |" * (len(head) - 2)]
    for r in rows:
        cond = ", ".join(f"{c['token1']}: {fmt_p(c['p_vs_exact'])}" for c in r["conditional"]) or "–"
        vs_plain = (f"{fmt_p(r['p_token1_vs_plain'])} / {fmt_p(r['p_token2_vs_plain'])}"
                    if "p_token1_vs_plain" in r else "–")
        tau = f"{r['tau']['tau']:.2f}" if r.get("tau") else "–"
        drafted = f"{r['token2_drafted'][0]}/{r['token2_drafted'][1]}" if r.get("token2_drafted") else "–"
        lines.append("| " + " | ".join([r["setting"], r["server"], str(r["samples"]), fmt_p(r["p_token1_vs_exact"]),
                                         fmt_p(r["p_token2_vs_exact"]), cond, vs_plain, tau, drafted,
                                         f"{r['detectable_shift_token2']:.3f}"]) + " |")
    return "\n".join(lines)


def environment() -> dict[str, str]:
    def out(cmd: list[str]) -> str:
        try:
            return subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=30).stdout
        except (OSError, subprocess.SubprocessError):
            return ""

    model = next((line.split(":", 1)[1].strip() for line in out(["lscpu"]).splitlines()
                  if line.startswith("Model name")), "unknown")
    dirty = bool(out(["git", "status", "--porcelain", "--untracked-files=no"]).strip())
    return {"commit": out(["git", "rev-parse", "HEAD"]).strip(), "worktree_modified": dirty, "machine": model,
            "cpus": str(os.cpu_count()), "command": shlex.join([sys.executable, *sys.argv]),
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds")}


def run(args: argparse.Namespace) -> dict[str, Any]:
    from tqdm import tqdm

    out_json = Path(args.json)
    out_json.parent.mkdir(parents=True, exist_ok=True)
    cache = out_json.parent / "cache"
    target, draft, prompt = tiny_pair(cache) if args.pair == "tiny" else embedded_pair()
    names = [s for s in args.servers.split(",") if s]
    if "plain" not in names:
        raise SystemExit("--servers must include plain (the two-sample reference)")
    settings = {k: v for k, v in st.SETTINGS.items() if not args.settings or k in args.settings.split(",")}
    requests_per_setting = -(-args.samples // args.per_request)
    run_settings = {"pair": args.pair, "target": str(target), "draft": str(draft), "prompt": prompt,
                    "samples": requests_per_setting * args.per_request, "per_request": args.per_request,
                    "tau_requests": args.tau_requests, "tau_tokens": args.tau_tokens, "alpha": args.alpha,
                    "server_args": args.server_args, "servers": names, "settings": settings}
    rows_path = out_json.with_name(out_json.name + ".rows.jsonl")
    done = read_rows(rows_path, run_settings)
    if not done:
        start_rows(rows_path, run_settings)
    t_start = time.time()
    exact = (st.exact_distributions(target, prompt, settings) if args.pair == "tiny"
             else exact_subset(target, prompt, settings, EMBEDDED_MAX_TOKEN1_ROWS))
    from sglang_domino.provenance import provenance

    meta = {**environment(), **run_settings, "provenance": provenance(draft, target)}
    extra = shlex.split(args.server_args)
    todo = [(name, srv) for name in settings for srv in names
            if not any(r["setting"] == name and r["server"] == srv for r in done)]
    servers: dict[str, Server] = {}
    try:
        needed = {srv for _, srv in todo}
        for srv in names:
            if srv not in needed:
                continue
            env = {MAX_SPECULATIVE_BATCH_ENV: "none"} if srv == "domino_always" else {}
            servers[srv] = Server(srv, target, None if srv == "plain" else draft, out_json.parent / "logs", extra, env)
        for s in servers.values():
            s.wait_healthy()
        progress = tqdm(total=len(settings) * len(names), initial=len(settings) * len(names) - len(todo),
                        desc="sampling audit", unit="cell")
        for name, srv in todo:
            server, sp = servers[srv], settings[name]
            tag = f"audit-{srv}-{name}-{int(time.time())}"
            t0 = time.time()
            mark = server.draft_log_lines()
            pairs, _ = st.draw(server.generate, sp, requests=requests_per_setting, n=args.per_request, tag=tag,
                               concurrency=args.concurrency, prompt=prompt)
            row: dict[str, Any] = {"setting": name, "server": srv, "sampling_params": sp,
                                   "pairs": pairs.tolist(), "sample_seconds": round(time.time() - t0, 1)}
            if srv != "plain":
                row["token2_drafted"] = server.token2_drafting(mark, prompt, sp)
                row["tau"] = measure_tau(server, prompt, sp, args.tau_requests, args.tau_tokens)
            append_row(rows_path, row)
            done.append(row)
            write_outputs(out_json, meta, done, exact, args.alpha, partial=True, elapsed=time.time() - t_start)
            progress.update(1)
        progress.close()
    finally:
        for s in servers.values():
            s.stop()
    result = write_outputs(out_json, meta, done, exact, args.alpha, partial=False, elapsed=time.time() - t_start)
    print(result["table"])
    return result


def write_outputs(out_json: Path, meta: dict, done: list[dict], exact: dict[str, st.Exact], alpha: float, *,
                  partial: bool, elapsed: float) -> dict[str, Any]:
    plain = {r["setting"]: np.array(r["pairs"]) for r in done if r["server"] == "plain"}
    order = {s: i for i, s in enumerate(meta["settings"])}
    rows = []
    for r in sorted(done, key=lambda r: (order.get(r["setting"], 99), SERVERS.index(r["server"]))):
        pairs = np.array(r["pairs"])
        ref = None if r["server"] == "plain" else plain.get(r["setting"])
        a = analyse(exact[r["setting"]], pairs, ref, alpha)
        rows.append({"setting": r["setting"], "server": r["server"], "sampling_params": r["sampling_params"], **a,
                     "tau": r.get("tau"), "token2_drafted": r.get("token2_drafted"),
                     "sample_seconds": r.get("sample_seconds")})
    table = markdown_table(rows)
    result = {**meta, "partial": partial, "seconds": round(elapsed, 1), "rows": rows, "table": table}
    out_json.write_text(json.dumps(result, indent=2) + "\n")
    out_json.with_suffix(".md").write_text(
        f"Sampling audit ({meta['pair']} pair, prompt {meta['prompt']}), commit {meta['commit'][:10]}"
        f"{' + uncommitted changes' if meta['worktree_modified'] else ''}, {meta['machine']}"
        f"{' -- PARTIAL' if partial else ''}\n\n`{meta['command']}`\n\n{table}\n")
    return result


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", required=True, help="output JSON (the markdown table goes next to it, .md)")
    p.add_argument("--samples", type=int, default=4000, help="(token 1, token 2) draws per server and setting")
    p.add_argument("--per-request", type=int, default=40, help="n (parallel samples) per /generate request")
    p.add_argument("--concurrency", type=int, default=4, help="requests in flight per server while sampling")
    p.add_argument("--pair", choices=("tiny", "embedded"), default="tiny",
                   help="tiny: benchmarks/tiny_pair.py (built under the JSON's folder, cache/); embedded: the "
                        "embedded SmolLM2-135M pair")
    p.add_argument("--servers", default=",".join(SERVERS), help=f"comma-separated subset of {','.join(SERVERS)}")
    p.add_argument("--settings", default="", help=f"comma-separated subset of {','.join(st.SETTINGS)} (default all)")
    p.add_argument("--tau-requests", type=int, default=8, help="single requests per setting for τ")
    p.add_argument("--tau-tokens", type=int, default=32, help="max_new_tokens of the τ requests")
    p.add_argument("--alpha", type=float, default=1e-4, help="significance level of the detectable-shift figure")
    p.add_argument("--server-args", default="", help="extra flags for every server, one string (e.g. --dtype float32)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    run(parser.parse_args())
