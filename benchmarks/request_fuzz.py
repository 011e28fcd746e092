"""Seeded random request fuzzer against a Domino SGLang server: the server stays up, answers are well formed.

Random *valid* requests -- ``/generate`` (``input_ids`` and ``text``), ``/v1/chat/completions`` and
``/v1/completions`` -- with random temperature (0 included), top-p, top-k, min-p, frequency / presence /
repetition penalties, ``n`` 1-3, logprobs (``return_logprob`` + ``top_logprobs_num``, OpenAI ``logprobs`` /
``top_logprobs``), ``json_schema`` constrained decoding (xgrammar, SGLang's default grammar backend), stop strings,
``stop_token_ids``, ``max_tokens`` 1-80, ``ignore_eos``, streaming with random client hang-ups, and
``/abort_request`` of in-flight request ids, at a concurrency re-drawn at random (1..MAX in flight).

Checks, per request: the HTTP status is 200 and the body is what a client reads (text / output_ids / meta_info
finish reason for ``/generate``; choices, message / text and usage for OpenAI; ``n`` choices; logprobs present and
as long as the completion; finish reason in the allowed set, ``abort`` only for a request we aborted; no stop
token / EOS before the last token; a matched stop string trimmed from the text; a ``json_schema`` output that ended
normally parses and matches its schema). Per server: it stays up (process alive, ``/health``), and the draft log's
row invariants (``benchmarks/invariants.py``) hold for every request whose output token ids the client saw. The
caller checks the KV pool's idle usage before and after, and a greedy request against a plain server.

The generator is :mod:`.fuzz_cases`, the client and the checks :mod:`.fuzz_checks`; this module runs them against a
server. ``tests/server/test_request_fuzz.py`` imports it
(a ~80-request version against the tiny test pair); run as a script it starts its own default Domino server
(``sglang-domino serve``'s command, the embedded pair unless ``--target/--draft``) and reports counts, failures,
invariant violations, idle KV before / after and wall time::

    python benchmarks/request_fuzz.py --requests 600 --concurrency 16 --seed 0 \\
        --json benchmarks/results/request_fuzz.json
"""

from __future__ import annotations

import argparse
import json
import random
import shlex
import sys
import time
from collections import Counter
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import requests

from sglang_domino.benchmarks.fuzz_cases import REQUEST_TIMEOUT_S, Case, Pools, make_cases
from sglang_domino.benchmarks.fuzz_checks import Outcome, run_case
from sglang_domino.benchmarks.invariants import Seen, check_rows

# ----------------------------------------------------------------------------------------------- server-level
def healthy(url: str) -> bool:
    try:
        return requests.get(url + "/health", timeout=60).status_code == 200
    except requests.RequestException:
        return False


def _loads(url: str) -> dict:
    r = requests.get(url + "/v1/loads", timeout=60)
    r.raise_for_status()
    return r.json()["loads"][0]


def idle_used_tokens(url: str, timeout: float = 120.0) -> int:
    """KV tokens in use once no request runs or waits and the prefix cache is flushed."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        load = _loads(url)
        if load["num_running_reqs"] == 0 and load["num_waiting_reqs"] == 0:
            if requests.post(url + "/flush_cache", timeout=60).status_code == 200:
                return int(_loads(url)["num_used_tokens"])
        time.sleep(0.5)
    raise AssertionError(f"{url} never became idle: {_loads(url)}")


def read_draft_log(path: Optional[Path]) -> list[dict]:
    if path is None or not Path(path).exists():
        return []
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


@dataclass
class FuzzResult:
    outcomes: list[Outcome]
    seconds: float
    max_in_flight: int
    alive_during: bool = True
    not_sent: int = 0

    def by_kind(self) -> dict[str, int]:
        return dict(Counter(o.kind for o in self.outcomes))

    def failures(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.problems]

    def seen(self) -> dict[str, Seen]:
        merged: dict[str, Seen] = {}
        for o in self.outcomes:
            merged.update(o.seen)
        return merged

    def counts(self) -> dict[str, Any]:
        outs = self.outcomes
        return {
            "requests": len(outs), "by_kind": self.by_kind(),
            "streamed": sum(o.stream for o in outs), "hang_ups": sum(o.hung_up for o in outs),
            "aborts_sent": sum(o.aborted for o in outs),
            "finished_by_abort": sum(f == "abort" for o in outs for f in o.finish),
            "finish_reasons": dict(Counter(f for o in outs for f in o.finish)),
            "completion_tokens": sum(o.completion_tokens for o in outs),
            "failed_requests": len(self.failures()), "max_in_flight": self.max_in_flight, "not_sent": self.not_sent,
            "server_alive_during": self.alive_during,
            "seconds": round(self.seconds, 1),
        }

    def summary(self) -> str:
        c = self.counts()
        kinds = " ".join(f"{k}={v}" for k, v in sorted(c["by_kind"].items()))
        return (f"fuzz: {c['requests']} requests ({kinds}; {c['streamed']} streamed), {c['hang_ups']} hang-ups, "
                f"{c['aborts_sent']} aborts sent ({c['finished_by_abort']} ended by abort), "
                f"{c['completion_tokens']} tokens, max {c['max_in_flight']} in flight, "
                f"{c['failed_requests']} failed, {c['seconds']:.1f} s")


def run_fuzz(url: str, cases: list[Case], *, max_concurrency: int, seed: int,
             alive: Optional[Callable[[], bool]] = None, progress=None,
             submit_budget_s: Optional[float] = None) -> FuzzResult:
    """Send ``cases`` keeping a random number (1..max_concurrency, re-drawn every few submissions) in flight.

    ``submit_budget_s``: submit no new case after that many seconds (the in-flight ones still finish); a CI
    bound for slow or shared machines -- the cases not sent are counted as ``not_sent``."""
    rng = random.Random(seed ^ 0x5EED)
    outcomes: list[Outcome] = []
    t0 = time.monotonic()
    pending: set[Future] = set()
    target, left_at_target, peak = 1, 0, 0
    alive_during = True
    with ThreadPoolExecutor(max_workers=max_concurrency) as pool:
        it = iter(cases)
        exhausted = False
        while pending or not exhausted:
            while not exhausted and len(pending) < target:
                if submit_budget_s is not None and time.monotonic() - t0 > submit_budget_s:
                    exhausted = True
                    break
                case = next(it, None)
                if case is None:
                    exhausted = True
                    break
                pending.add(pool.submit(run_case, url, case))
                peak = max(peak, len(pending))
                left_at_target -= 1
                if left_at_target <= 0:
                    target, left_at_target = rng.randint(1, max_concurrency), rng.randint(2, 12)
            if not pending:
                break
            done, pending = wait(pending, timeout=REQUEST_TIMEOUT_S + 30, return_when=FIRST_COMPLETED)
            if not done:
                raise AssertionError(f"no request finished in {REQUEST_TIMEOUT_S + 30:.0f} s: the server hangs")
            for f in done:
                outcomes.append(f.result())
                if progress is not None:
                    progress.update(1)
            if alive is not None and not alive():
                alive_during = False
                break
    outcomes.sort(key=lambda o: o.index)
    return FuzzResult(outcomes, time.monotonic() - t0, peak, alive_during, not_sent=len(cases) - len(outcomes))


def check_invariants(records: list[dict], result: FuzzResult):
    """invariants.check_rows over every request whose output ids the client saw."""
    return check_rows(records, result.seen())


# ----------------------------------------------------------------------------------------------- CLI
def corpus_texts() -> list[str]:
    """Prompt texts for the tiny test pair (the sentences its tokenizer was trained on)."""
    from sglang_domino.benchmarks import tiny_pair

    return [s.strip() + "." for s in tiny_pair._CORPUS.strip().split(".") if s.strip()]


def _prompt_texts(embedded: bool) -> list[str]:
    if embedded:
        from sglang_domino.embedded import HELDOUT_PROMPTS

        return [m["content"] for line in HELDOUT_PROMPTS.read_text().splitlines() if line.strip()
                for m in json.loads(line)["messages"] if m.get("role") == "user"]
    return corpus_texts()


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--requests", type=int, default=600)
    p.add_argument("--concurrency", type=int, default=16, help="most requests in flight (drawn 1..MAX)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--target", default=None, help="target model directory (default: the embedded pair)")
    p.add_argument("--draft", default=None, help="Domino drafter (default: the embedded drafter)")
    p.add_argument("--no-grammar", action="store_true", help="leave json_schema requests out")
    p.add_argument("--json", default=None, help="write the report here")
    p.add_argument("--log-dir", default=None, help="server log and draft log (default: a temp dir)")
    p.add_argument("--start-timeout", type=float, default=900.0)
    p.add_argument("--budget-s", type=float, default=None,
                   help="submit no new request after this many seconds (the rest are reported as not_sent)")
    args = p.parse_args(argv)

    import tempfile

    from tqdm import tqdm
    from transformers import AutoTokenizer

    embedded = args.target is None and args.draft is None
    if embedded:
        from sglang_domino.embedded import prepare_embedded_pair

        pair = prepare_embedded_pair()
        target, draft = Path(pair.target), Path(pair.draft)
    elif args.target is None or args.draft is None:
        p.error("--target and --draft go together")
    else:
        target, draft = Path(args.target), Path(args.draft)
    log_dir = Path(args.log_dir or tempfile.mkdtemp(prefix="request_fuzz_"))
    log_dir.mkdir(parents=True, exist_ok=True)
    draft_log = log_dir / "drafts.jsonl"
    draft_log.unlink(missing_ok=True)
    from sglang_domino.provenance import provenance
    from sglang_domino.benchmarks.serving import Server as ServeProcess
    from sglang_domino.server.process import free_port

    server = ServeProcess("request-fuzz", target, draft, free_port(), [], log_dir,
                          {"SGLANG_DOMINO_DRAFT_LOG": str(draft_log)})
    cmd = server.cmd
    print(f"started: SGLANG_DOMINO_DRAFT_LOG={draft_log} {shlex.join(cmd)}", flush=True)
    report: dict[str, Any] = {"command": shlex.join([sys.executable, *sys.argv]),
                              "server_command": shlex.join(cmd), "seed": args.seed, "requests": args.requests,
                              "max_concurrency": args.concurrency, "budget_s": args.budget_s, "target": str(target),
                              "draft": str(draft), "grammar": not args.no_grammar,
                              "provenance": provenance(draft, target)}  # git commit, machine, weights' sha256
    try:
        t_start = time.monotonic()
        server.wait_healthy(args.start_timeout)
        url, proc = server.url, server.proc  # after the start: a port clash restarts it on another port
        report["server_start_s"] = round(time.monotonic() - t_start, 1)
        tokenizer = AutoTokenizer.from_pretrained(target)
        pools = Pools.from_tokenizer(tokenizer, _prompt_texts(embedded))
        cases = make_cases(args.seed, args.requests, pools, grammar=not args.no_grammar)
        idle_before = idle_used_tokens(url)
        with tqdm(total=len(cases), desc="fuzz", unit="req") as bar:
            result = run_fuzz(url, cases, max_concurrency=args.concurrency, seed=args.seed,
                              alive=lambda: proc.poll() is None, progress=bar, submit_budget_s=args.budget_s)
        alive = proc.poll() is None and healthy(url)
        idle_after = idle_used_tokens(url) if alive else None
        inv = check_invariants(read_draft_log(draft_log), result)
        failures = result.failures()
        report.update(result.counts())
        report.update({
            "server_alive_after": alive, "idle_kv_tokens_before": idle_before, "idle_kv_tokens_after": idle_after,
            "kv_leak": None if idle_after is None else idle_after - idle_before,
            "invariants": {"checked_requests": inv.checked_requests, "checked_rows": inv.checked_rows,
                           "violations": len(inv.violations), "first_violations": inv.violations[:20]},
            "failures": [{"index": o.index, "kind": o.kind, "stream": o.stream, "status": o.status,
                          "problems": o.problems[:5], "request": cases[o.index].body} for o in failures[:30]],
            "ok": alive and not failures and not inv.violations and idle_after == idle_before,
        })
        print(result.summary())
        print(f"invariants: {inv.checked_requests} requests, {inv.checked_rows} rows, "
              f"{len(inv.violations)} violations; idle KV before {idle_before}, after {idle_after}; "
              f"server alive: {alive}; ok: {report['ok']}")
        for o in failures[:10]:
            print(f"  FAIL #{o.index} {o.kind} stream={o.stream}: {o.problems[:3]}")
        if inv.violations:
            print(inv.summary())
    finally:
        server.stop()
        if args.json:
            Path(args.json).parent.mkdir(parents=True, exist_ok=True)
            Path(args.json).write_text(json.dumps(report, indent=1, default=str) + "\n")
            print(f"wrote {args.json}")
    return 0 if report.get("ok") else 1


if __name__ == "__main__":
    sys.exit(main())
