"""Issue 25's drift, looked for at scale: Domino's sampled tokens after the traffic that preceded the failure.

Starts a plain and a Domino server on the tiny pair (float32; Domino drafting at every batch size, as the shared test
servers), sends both the hostile traffic of ``tests/server/test_row_invariants.py`` (aborts, hang-ups, ``n > 1``,
context-edge prompts, every sampling kind mixed) and the old sampling module's workload, then draws tokens 1 and 2 of
the old sampling test's prompt ``REQUESTS`` x 40 times per server at T 1 and T 1 + top-p 0.8 (8 requests in flight),
and compares them with the exact target distribution: token 1, token 2, and token 2 given the three most likely
token-1 values (chi-square; cells expected < 5 pooled). Also checks the draft log's row invariants.

    python scripts/exploration/sampling_after_hostile_traffic.py OUT_DIR [--requests 60] [--json OUT.json]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "tests" / "server")]

PROMPT = [57, 121, 33, 210, 95, 17]  # the sampling module's prompt when issue 25 saw the drift
SETTINGS = {"t1": {"temperature": 1.0}, "t1_top_p": {"temperature": 1.0, "top_p": 0.8}}


def goodness_of_fit(tokens, probs) -> float:
    import numpy as np
    from scipy.stats import chisquare

    n = len(tokens)
    exp = probs * n
    big = exp >= 5
    obs = np.bincount(tokens, minlength=len(probs)).astype(float)
    if obs[probs == 0].sum():
        return 0.0
    o, e = np.append(obs[big], obs[~big].sum()), np.append(exp[big], exp[~big].sum())
    if e[-1] < 1e-9:
        o, e = o[:-1], e[:-1]
    return float(chisquare(o, e * o.sum() / e.sum()).pvalue)


def main() -> int:
    import numpy as np
    import torch
    from transformers import AutoModelForCausalLM

    from sglang_domino.benchmarks import tiny_pair
    from server import conftest as C
    from sglang_domino.benchmarks.invariants import Seen, check_rows
    from server.test_row_invariants import Recorder, hostile_traffic, sampling_module_workload
    from sglang_domino.sampling import SamplingParams, filtered_probs

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out", type=Path)
    p.add_argument("--requests", type=int, default=60)
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    pair = tiny_pair.build_pair(args.out / "pair")
    draft_log = args.out / "drafts.jsonl"
    servers = {}
    for name, draft, env in (
            ("plain", None, C.cpu_env()),
            ("domino", pair.drafter, C.cpu_env(SGLANG_DOMINO_DRAFT_LOG=str(draft_log),
                                               SGLANG_DOMINO_DRAFT_LOGITS_DTYPE="float32",
                                               SGLANG_DOMINO_MAX_SPECULATIVE_BATCH="none"))):
        port = C.free_port()
        cmd = C.launch_cmd(pair.target, port, draft=draft)
        servers[name] = C.Server(name, cmd, env, args.out / f"{name}.log", draft_log if draft else None).start()
    draws: dict[str, list[list[int]]] = {}
    seen: dict[str, Seen] = {}
    lock = threading.Lock()
    try:
        for s in servers.values():
            C.wait_ready(s)
        for name, s in servers.items():
            rec = Recorder(s)
            hostile_traffic(rec, f"h-{name}", 2048)
            sampling_module_workload(rec, f"h-{name}-s")
            if name == "domino":
                seen.update(rec.seen)

        def one(job) -> None:
            srv, tag, sp, i = job
            out = servers[srv].generate(rid=f"{srv}-{tag}-{i}", input_ids=PROMPT, timeout=900,
                                        sampling_params=dict(sp, max_new_tokens=2, ignore_eos=True, n=40))
            with lock:
                for item in out:
                    draws.setdefault(f"{srv}/{tag}", []).append(item["output_ids"])
                    if srv == "domino":
                        seen[item["meta_info"]["id"]] = Seen(item["output_ids"], True, len(PROMPT))

        jobs = [(srv, tag, sp, i) for i in range(args.requests) for tag, sp in SETTINGS.items()
                for srv in servers]
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(one, jobs))
        report = check_rows(servers["domino"].draft_records(), seen)
    finally:
        for s in servers.values():
            s.stop()

    model = AutoModelForCausalLM.from_pretrained(pair.target, dtype=torch.float32).eval()
    with torch.no_grad():
        l1 = model(torch.tensor([PROMPT])).logits[0, -1:]
        vocab = l1.shape[-1]
        l2 = model(torch.cat((torch.tensor(PROMPT).expand(vocab, -1), torch.arange(vocab)[:, None]), 1)).logits[:, -1]
    results = []
    for tag, sp in SETTINGS.items():
        p1 = filtered_probs(l1, SamplingParams.uniform(1, **sp))[0].double().numpy()
        p2_given = filtered_probs(l2, SamplingParams.uniform(vocab, **sp)).double().numpy()
        p2 = (p1[:, None] * p2_given).sum(0)
        for srv in servers:
            arr = np.array(draws[f"{srv}/{tag}"])
            row = {"server": srv, "setting": tag, "samples": len(arr), "p_token1": goodness_of_fit(arr[:, 0], p1),
                   "p_token2": goodness_of_fit(arr[:, 1], p2), "p_token2_given": {}}
            for t1 in np.argsort(-p1)[:3]:
                given = arr[arr[:, 0] == t1, 1]
                row["p_token2_given"][int(t1)] = {"n": len(given), "p": goodness_of_fit(given, p2_given[t1])}
            results.append(row)
            print(json.dumps(row))
    summary = {"results": results, "invariants": {"rows": report.checked_rows, "requests": report.checked_requests,
                                                  "violations": report.violations[:20]},
               "requests_per_setting": args.requests, "per_request": 40, "prompt": PROMPT,
               "commit": subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True,
                                        text=True).stdout.strip(),
               "command": " ".join(sys.argv)}
    print(json.dumps(summary["invariants"]))
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2) + "\n")
    return 0 if report and all(min(r["p_token1"], r["p_token2"]) > 1e-4 for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
