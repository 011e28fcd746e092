"""Automatic switch-off: decode batches above a size run plain-width steps (no drafts), smaller ones draft.

Why: on a CPU the target's verify forward is compute-bound once a few requests share a step, so verifying B
tokens per request costs nearly B times a plain step while the drafts win back only τ: above a small batch size
speculation loses to plain decoding (see the README's serving results). A *plain-width* step verifies one
token per request -- the bonus, i.e. exactly a plain decode step -- and still feeds the drafter's context KV
with the target's hidden states of the committed tokens, so drafting resumes at full width, with nothing
missing from its context, as soon as the batch shrinks again.

Mechanism (the analogue of upstream EAGLE's adaptive runtime states, without graphs to rebuild on CPU):
every attribute of ``DFlashWorkerV2`` whose shape follows the block width (:data:`WIDTH_ATTRS`) is kept per width
in a :class:`WidthStates` and swapped in before a step. Nothing carried from one step to the next depends on the
width (``DFlashDraftInputV2`` holds the bonus tokens and lengths; the drafter-KV append happens inside the step),
and the scheduler reads each result's own ``speculative_num_draft_tokens``, so consecutive steps may differ.
Every emitted token is still the target's own (width 1 emits the target's bonus), so the switch cannot change
outputs, only speed.

``$SGLANG_DOMINO_MAX_SPECULATIVE_BATCH``: ``auto`` (default: ``adaptive`` on CPU, no limit on GPUs, whose verify is
cheap at these batch sizes), ``adaptive`` (CPU only: :class:`MeasuredWidthChoice` -- per decode batch size, draft or
not by which of the two measured more output tokens per second on this machine), ``none`` (always draft), or
N >= 1 (draft while the decode batch has at most N requests).

Why measured rather than a fixed N: where speculation stops paying depends on the CPU. On an AVX-512 machine
Domino beat plain decoding at one request and tied at two; on an AVX2-only machine (float32, no bf16 units) it
lost even at one with an earlier drafting kernel (README, serving results). The break-even moves with the
drafter's τ, the width and the kernels too, so the worker measures both kinds of step as it serves.
"""

from __future__ import annotations

import os
import statistics
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable, Optional, Union

MAX_SPECULATIVE_BATCH_ENV = "SGLANG_DOMINO_MAX_SPECULATIVE_BATCH"

# DFlashWorkerV2 (sglang 0.5.23) attributes whose shape follows the block width: the width itself, the block
# position offsets [B], the draft block's spec info (draft_token_num = B) and the [cap, B] / [cap] block buffers
# (allocated lazily by _ensure_draft_block_buffers, which only checks the capacity, hence one set per width).
WIDTH_ATTRS: tuple[str, ...] = (
    "block_size",
    "speculative_num_draft_tokens",
    "_block_pos_offsets",
    "_draft_block_spec_info",
    "_draft_block_ids_buf",
    "_draft_block_positions_buf",
    "_draft_block_tokens_buf",
    "_draft_verify_out_cache_loc_buf",
    "_draft_block_end_buf",
    "_draft_seq_lens_cpu_buf",
)


ADAPTIVE = "adaptive"


def _setting(raw: Optional[str]) -> str:
    return (raw if raw is not None else os.environ.get(MAX_SPECULATIVE_BATCH_ENV, "")).strip().lower()


def is_default_setting(raw: Optional[str] = None) -> bool:
    """Whether the setting is the default (unset or ``auto``) rather than the user's explicit choice."""
    return _setting(raw) in ("", "auto")


def resolve_max_speculative_batch(device_type: str, raw: Optional[str] = None) -> Union[None, int, str]:
    """The draft-width setting from ``raw`` or ``$SGLANG_DOMINO_MAX_SPECULATIVE_BATCH``: None = always draft, an
    integer N = draft while a decode batch has at most N requests, :data:`ADAPTIVE` = measure (CPU only).

    Raises ValueError naming the variable on anything but ``auto``, ``adaptive``, ``none`` or an integer >= 1, and
    on ``adaptive`` for a device other than the CPU (its step times would need a device synchronisation)."""
    value = _setting(raw)
    if is_default_setting(value):
        return ADAPTIVE if device_type == "cpu" else None
    if value == "none":
        return None
    if value == ADAPTIVE:
        if device_type != "cpu":
            raise ValueError(f"{MAX_SPECULATIVE_BATCH_ENV}=adaptive times steps on the host, which needs a synchronous "
                             f"device (CPU); on {device_type} use none or an integer")
        return ADAPTIVE
    try:
        limit = int(value)
    except ValueError:
        limit = 0
    if limit < 1:
        raise ValueError(f"{MAX_SPECULATIVE_BATCH_ENV}={value!r}: expected auto, adaptive, none or an integer >= 1 "
                         "(the largest decode batch that drafts)")
    return limit


def step_width(batch_size: int, block_size: int, max_speculative_batch: Optional[int]) -> int:
    """The block width of a decode step of ``batch_size`` requests: ``block_size``, or 1 above the limit."""
    if max_speculative_batch is not None and batch_size > max_speculative_batch:
        return 1
    return block_size


class FixedWidthRule:
    """A fixed limit (None = always draft): :func:`step_width`; measurements are not needed."""

    measures = False

    def __init__(self, full_width: int, max_speculative_batch: Optional[int]) -> None:
        self.full_width = int(full_width)
        self.max_speculative_batch = max_speculative_batch

    @property
    def always_drafts(self) -> bool:
        return self.max_speculative_batch is None

    def width(self, batch_size: int) -> int:
        return step_width(batch_size, self.full_width, self.max_speculative_batch)

    def record(self, batch_size: int, width: int, tokens: int, seconds: float) -> Optional[str]:
        return None

    def describe(self) -> str:
        if self.max_speculative_batch is None:
            return "drafting at every batch size"
        return (f"drafting while a decode batch has at most {self.max_speculative_batch} requests (plain-width steps "
                f"above, {MAX_SPECULATIVE_BATCH_ENV})")


@dataclass
class _Throughput:
    """Output tokens and seconds per step of one kind at one batch size (rate = tokens / seconds).

    Tokens: an exponential average (bounded per step, only noisy). Seconds: the median of the last
    ``window`` steps, because step times have outliers that an average carries for a long time: the first steps
    of a kind pay one-time costs, and a server's first steps share the CPU with whatever else is starting (in a
    benchmark starting three servers, the first drafting steps measured 2.0 tok/s against ~17 later, and an
    average starting there took three minutes of sparse exploring steps to recover). A median forgets a slow
    start after ``window // 2 + 1`` normal steps, ignores a stray slow step (a garbage collection) and follows a
    lasting change as fast."""

    recent_seconds: deque  # bounded: deque(maxlen=window)
    tokens: float = 0.0
    samples: int = 0

    def add(self, tokens: float, seconds: float, smoothing: float) -> None:
        self.tokens = tokens if self.samples == 0 else self.tokens + smoothing * (tokens - self.tokens)
        self.recent_seconds.append(seconds)
        self.samples += 1

    @property
    def seconds(self) -> float:
        return statistics.median(self.recent_seconds) if self.recent_seconds else 0.0

    @property
    def rate(self) -> float:
        seconds = self.seconds
        return self.tokens / seconds if seconds > 0 else 0.0


class MeasuredWidthChoice:
    """Per decode batch size, draft (full width) or not (plain width), whichever measured more output tokens per
    second here.

    Each batch-size bucket (:meth:`bucket`) first runs :attr:`min_samples` steps of each kind, then keeps the kind
    with the higher rate (tokens per step: exponential average, weight :attr:`smoothing`; seconds per step: median
    of the kind's last :attr:`window` steps) and changes only when the other one is ahead by more than
    :attr:`margin` (near break-even, noise would otherwise flip it every few steps for nothing); every
    :attr:`explore_every`-th step runs the other kind, so a change (a longer context, other prompts, a busier
    machine) is noticed. While the explored kind stays far behind (more than :attr:`backoff_gap` below the
    preferred rate) the interval doubles after each exploring step, up to :attr:`max_explore_every`: where one kind
    clearly loses, a fixed 1 step in 16 of it is throughput spent on a question already answered. A close race or
    a change of preference sets it back to :attr:`explore_every`. Tokens per step are what the step committed
    (accepted drafts + bonus per request; one per request at plain width), seconds the worker's wall time for the
    step (CPU: synchronous). Outputs cannot depend on the choice. A change of preference is reported
    (:meth:`record`) at most once per :attr:`log_interval` seconds per bucket.
    """

    measures = True
    always_drafts = False

    def __init__(self, full_width: int, *, min_samples: int = 3, explore_every: int = 16,
                 max_explore_every: int = 128, backoff_gap: float = 0.2, smoothing: float = 0.25,
                 margin: float = 0.05, window: int = 5, log_interval: float = 60.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.full_width = int(full_width)
        self.min_samples = min_samples
        self.explore_every = explore_every
        self.max_explore_every = max_explore_every
        self.backoff_gap = backoff_gap
        self.smoothing = smoothing
        self.margin = margin
        self.window = window
        self.log_interval = log_interval
        self._clock = clock
        self._stats: dict[tuple[int, bool], _Throughput] = {}
        self._steps: dict[int, int] = {}
        self._explore_every: dict[int, int] = {}  # per bucket: the current exploring interval
        self._preferred: dict[int, bool] = {}  # per bucket, once both kinds are measured
        self._logged: dict[int, tuple[float, bool]] = {}  # per bucket: when, and which preference, last reported

    @staticmethod
    def bucket(batch_size: int) -> int:
        """Batch sizes up to 8 each, then powers of two (9-16 -> 16, 17-32 -> 32, ...)."""
        return batch_size if batch_size <= 8 else 1 << (batch_size - 1).bit_length()

    def _throughput(self, bucket: int, drafting: bool) -> _Throughput:
        stats = self._stats.get((bucket, drafting))
        if stats is None:
            stats = self._stats[bucket, drafting] = _Throughput(recent_seconds=deque(maxlen=self.window))
        return stats

    def width(self, batch_size: int) -> int:
        b = self.bucket(batch_size)
        step = self._steps[b] = self._steps.get(b, 0) + 1
        drafting = self._preferred.get(b)
        if drafting is None:  # warm-up: drafting first
            drafting = self._throughput(b, True).samples < self.min_samples
        elif step % self._explore_every.get(b, self.explore_every) == 0:
            drafting = not drafting
        return self.full_width if drafting else 1

    def record(self, batch_size: int, width: int, tokens: int, seconds: float) -> Optional[str]:
        """Add one step's measurement; returns a log line when the preferred kind at this batch size changed (at
        most once per :attr:`log_interval` seconds per bucket)."""
        b, drafting = self.bucket(batch_size), width > 1
        self._throughput(b, drafting).add(float(tokens), float(seconds), self.smoothing)
        draft, plain = self._throughput(b, True), self._throughput(b, False)
        if min(draft.samples, plain.samples) < self.min_samples:
            return None
        current = self._preferred.get(b)
        if current is None:
            preferred = draft.rate >= plain.rate
        elif current:
            preferred = not plain.rate > draft.rate * (1 + self.margin)
        else:
            preferred = draft.rate > plain.rate * (1 + self.margin)
        self._preferred[b] = preferred
        if current is not None and preferred != current:
            self._explore_every[b] = self.explore_every
        elif current is not None and drafting != current:  # an exploring step kept the preference
            explored, kept = (draft, plain) if drafting else (plain, draft)
            far_behind = explored.rate < kept.rate * (1 - self.backoff_gap)
            interval = self._explore_every.get(b, self.explore_every)
            self._explore_every[b] = min(2 * interval, self.max_explore_every) if far_behind else self.explore_every
        now = self._clock()
        last = self._logged.get(b)
        if last is not None and (last[1] == preferred or now - last[0] < self.log_interval):
            return None
        self._logged[b] = (now, preferred)
        size = f"{b}" if b <= 8 else f"{b // 2 + 1}-{b}"
        return (f"Domino adaptive drafting: batch size {size}: drafting {draft.rate:.1f} tok/s vs plain-width "
                f"{plain.rate:.1f} tok/s -> {'drafting' if preferred else 'plain-width steps'}")

    def rates(self) -> dict[int, dict[str, float]]:
        """Measured tokens/s per bucket and kind (for logs and tests)."""
        out: dict[int, dict[str, float]] = {}
        for (b, drafting), t in sorted(self._stats.items()):
            if t.samples:
                out.setdefault(b, {})["drafting" if drafting else "plain"] = t.rate
        return out

    def describe(self) -> str:
        return (f"choosing per decode batch size between drafting and plain-width steps by measured tokens/s "
                f"({MAX_SPECULATIVE_BATCH_ENV}=adaptive)")


def width_rule(device_type: str, full_width: int, raw: Optional[str] = None) -> Union[FixedWidthRule,
                                                                                       MeasuredWidthChoice]:
    """The worker's rule for the width of each decode step, from :func:`resolve_max_speculative_batch`."""
    setting = resolve_max_speculative_batch(device_type, raw)
    if setting == ADAPTIVE:
        return MeasuredWidthChoice(full_width)
    return FixedWidthRule(full_width, setting)  # type: ignore[arg-type]


class WidthStates:
    """One set of :data:`WIDTH_ATTRS` per block width; :meth:`use` swaps a worker to another width.

    ``make_state(width)`` returns the fresh attribute values of a width not seen yet (buffers None: the worker
    allocates them lazily). The worker's attributes are the live state of ``current``; switching stores them
    back first, so buffers grown at one width are kept for the next step at that width."""

    def __init__(self, worker: Any, make_state: Callable[[int], dict[str, Any]]) -> None:
        # vars(), not hasattr: DFlashWorkerV2.__getattr__ forwards unknown names to the target worker.
        missing = [name for name in WIDTH_ATTRS if name not in vars(worker)]
        if missing:
            raise RuntimeError(f"Domino: the DFlash worker has no {', '.join(missing)}; the width switch was written "
                               "for sglang 0.5.23")
        self._worker = worker
        self._make_state = make_state
        self.full_width = int(worker.block_size)  # the configured width, the one between steps
        self.current = self.full_width
        self._saved: dict[int, dict[str, Any]] = {}

    def use(self, width: int) -> None:
        width = int(width)
        if width == self.current:
            return
        worker = self._worker
        self._saved[self.current] = {name: getattr(worker, name) for name in WIDTH_ATTRS}
        state = self._saved.pop(width, None)
        if state is None:
            state = self._make_state(width)
        for name in WIDTH_ATTRS:
            setattr(worker, name, state[name])
        self.current = width


__all__ = [
    "ADAPTIVE",
    "FixedWidthRule",
    "MAX_SPECULATIVE_BATCH_ENV",
    "MeasuredWidthChoice",
    "WIDTH_ATTRS",
    "WidthStates",
    "is_default_setting",
    "resolve_max_speculative_batch",
    "step_width",
    "width_rule",
]
