"""Deterministic row invariants of a Domino server, checked from its draft log against what clients received.

Every verified row of every decode step is one draft-log record (``SGLANG_DOMINO_DRAFT_LOG``, written by
``DominoWorker._log_drafts``). For a request whose output tokens ``out`` the client saw (streamed or whole), with
``k = pos - prompt_len`` the row's place in the output:

1. **own pool row**: the step read the request's own ``req_to_token`` row (``req_pool_idx == req_row``);
2. **own bonus**: the bonus the row drafted from and verified behind is the last token the request emitted,
   ``out[k]``;
3. **own tokens**: the drafts the row accepted are the request's next output tokens ``out[k+1 : k+1+accept]``;
4. **chain**: the request's rows follow each other by exactly what they committed:
   ``pos' == pos + accept + 1``, starting at ``k == 0``;
5. **own sampling parameters**: the row was verified with the request's temperature, top-p, top-k and min-p
   (greedy rows: by the greedy rule or as SGLang's greedy, temperature 1 / top-k 1);
6. rows beyond the output (``k >= len(out)``) only after the request's last output: the overlap scheduler runs
   one more step before it learns a request finished, and a hung-up stream stops being read.

A violation means a row was drafted or verified from another request's state (bonus relay, KV rows, reserved
slots) or with another request's parameters -- outputs would then drift without any crash.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Iterable, Optional

GREEDY_TOP_K = 1


@dataclass
class Seen:
    """What a client received for one request id (a choice of an ``n > 1`` request has its own id)."""

    output_ids: list[int]
    complete: bool = True  # False: the client hung up or the request was aborted (a prefix was seen)
    prompt_len: Optional[int] = None


@dataclass
class Report:
    checked_rows: int = 0
    checked_requests: int = 0
    violations: list[str] = field(default_factory=list)

    def __bool__(self) -> bool:
        return not self.violations

    def summary(self, limit: int = 12) -> str:
        head = "\n".join(self.violations[:limit])
        more = f"\n... and {len(self.violations) - limit} more" if len(self.violations) > limit else ""
        return f"{len(self.violations)} violations in {self.checked_rows} rows of {self.checked_requests} requests:\n" \
               f"{head}{more}"


def _is_greedy(sampling: dict) -> bool:
    return int(sampling["top_k"]) == GREEDY_TOP_K or float(sampling["temperature"]) < 1e-5


def _same_params(used: dict, requested: dict) -> bool:
    for key in ("temperature", "top_p", "min_p"):
        a, b = float(used[key]), float(requested[key])
        if abs(a - b) > 1e-6 * max(1.0, abs(b)):
            return False
    cap = 1 << 30  # SGLang's "no top-k"
    return min(int(used["top_k"]), cap) == min(int(requested["top_k"]), cap)


def check_rows(records: Iterable[dict], seen: dict[str, Seen]) -> Report:
    """Check the invariants above for every record whose request id is in ``seen``."""
    by_rid: dict[str, list[dict]] = defaultdict(list)
    for rec in records:
        if rec.get("rid") in seen:
            by_rid[rec["rid"]].append(rec)
    report = Report()
    bad = report.violations.append
    for rid, rows in by_rid.items():
        got = seen[rid]
        out = got.output_ids
        report.checked_requests += 1
        expected_pos = None
        for i, rec in enumerate(rows):
            report.checked_rows += 1
            where = f"{rid} row {i} (pos {rec['pos']})"
            prompt_len = rec["prompt_len"]
            if got.prompt_len is not None and prompt_len != got.prompt_len:
                bad(f"{where}: prompt_len {prompt_len} in the log, {got.prompt_len} sent")
            if rec.get("req_row") is not None and rec["req_pool_idx"] != rec["req_row"]:
                bad(f"{where}: read pool row {rec['req_pool_idx']} but the request owns row {rec['req_row']}")
            k = rec["pos"] - prompt_len
            if expected_pos is None:
                if k != 0:
                    bad(f"{where}: first row at output index {k}, expected 0")
            elif rec["pos"] != expected_pos:
                bad(f"{where}: chain broken, expected pos {expected_pos} after the previous row's commit")
            expected_pos = rec["pos"] + rec["accept"] + 1
            if k >= len(out):
                if got.complete and i != len(rows) - 1:
                    bad(f"{where}: row beyond the {len(out)} output tokens before the request's last row")
            else:
                if rec["bonus"] != out[k]:
                    bad(f"{where}: bonus {rec['bonus']} but the request emitted {out[k]} at index {k}")
                accepted = rec["drafts"][: rec["accept"]]
                emitted = out[k + 1 : k + 1 + len(accepted)]
                if emitted != accepted[: len(emitted)]:
                    bad(f"{where}: accepted drafts {accepted} but the request emitted {emitted}")
            requested, used = rec.get("sampling"), rec.get("verified_with")
            if requested is not None:
                if used is None:
                    if not _is_greedy(requested):
                        bad(f"{where}: a sampled request ({requested}) was verified by the greedy rule")
                elif not _same_params(used, requested):
                    bad(f"{where}: verified with {used}, the request asked for {requested}")
    return report


__all__ = ["Report", "Seen", "check_rows"]
