"""Step width per decode batch: plain-width steps (no drafts) where speculation does not pay, and on CPU by default
the narrower or wider verify that measured fastest.

Why: on a CPU the target's verify forward is compute-bound once a few requests share a step, so verifying B
tokens per request costs nearly B times a plain step while the drafts win back only τ: above a small batch size
speculation loses to plain decoding (see the README's serving results). A *plain-width* step verifies one
token per request -- the bonus, i.e. exactly a plain decode step -- and still feeds the drafter's context KV
with the target's hidden states of the committed tokens, so drafting resumes at full width, with nothing
missing from its context, as soon as the batch shrinks again. A width between 1 and the configured one drafts
fewer tokens and verifies fewer rows per request in the same way (the worker drafts a block of that width).

Mechanism (the analogue of upstream EAGLE's adaptive runtime states, without graphs to rebuild on CPU):
every attribute of ``DFlashWorkerV2`` whose shape follows the block width (:data:`WIDTH_ATTRS`) is kept per width
in a :class:`WidthStates` and swapped in before a step. Nothing carried from one step to the next depends on the
width (``DFlashDraftInputV2`` holds the bonus tokens and lengths; the drafter-KV append happens inside the step),
and the scheduler reads each result's own ``speculative_num_draft_tokens``, so consecutive steps may differ.
Every emitted token is still the target's own (width 1 emits the target's bonus; narrower blocks are verified by
the same rule), so the width cannot change outputs, only speed.

``$SGLANG_DOMINO_MAX_SPECULATIVE_BATCH``: ``auto`` (default: ``adaptive`` on CPU, no limit on GPUs, whose verify is
cheap at these batch sizes), ``adaptive`` (CPU only: :class:`MeasuredWidthChoice` -- per decode batch size, the width among
1 (plain), 2, 3, 4, 8 and the configured one, up to it, that measured the most output tokens per second on this
machine), ``none`` (always draft at the configured width), or N >= 0 (draft at the configured width while the
decode batch has at most N requests).

Why measured rather than a fixed N: where speculation stops paying depends on the CPU. On an AVX-512 machine
Domino beat plain decoding at one request and tied at two; on an AVX2-only machine (float32, no bf16 units) it
lost even at one with an earlier drafting kernel (README, serving results). The break-even moves with the
drafter's τ, the width and the kernels too, so the worker measures its steps as it serves. Why several widths: on
the AVX2 machine the first draft is accepted about a third of the time whatever the width, while every further
verified row per request costs ~11 ms: at one request width 2 commits 1.34 tokens per 72 ms step (18.7 tok/s of
worker time) against width 4's 1.57 per 94 ms (16.6) and plain width's 1 per 58.5 ms (17.1).
"""

from __future__ import annotations

import statistics
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable, Optional, Union

from sglang_domino.settings import MAX_SPECULATIVE_BATCH_ENV, parse_max_speculative_batch


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


def is_default_setting(setting: str) -> bool:
    """Whether the setting (:attr:`sglang_domino.settings.EnvSettings.max_speculative_batch`) is the default
    (``auto``) rather than the user's explicit choice."""
    return setting.strip().lower() in ("", "auto")


def resolve_max_speculative_batch(device_type: str, setting: str = "auto") -> Union[None, int, str]:
    """The draft-width rule of ``setting`` (``$SGLANG_DOMINO_MAX_SPECULATIVE_BATCH`` as
    :mod:`sglang_domino.settings` parsed it) on ``device_type``: None = always draft, an integer N = draft while a
    decode batch has at most N requests, :data:`ADAPTIVE` = measure (CPU only).

    Raises ValueError naming the variable on anything but ``auto``, ``adaptive``, ``none`` or an integer >= 1, and
    on ``adaptive`` for a device other than the CPU (its step times would need a device synchronisation)."""
    value = parse_max_speculative_batch(setting)
    if is_default_setting(value):
        return ADAPTIVE if device_type == "cpu" else None
    if value == "none":
        return None
    if value == ADAPTIVE:
        if device_type != "cpu":
            raise ValueError(f"{MAX_SPECULATIVE_BATCH_ENV}=adaptive times steps on the host, which needs a synchronous "
                             f"device (CPU); on {device_type} use none or an integer")
        return ADAPTIVE
    return int(value)


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
    """Output tokens and seconds per step of one width at one batch size (rate = tokens / seconds).

    Tokens: the mean of the last ``token_window`` steps. What a drafting step commits is noisy -- at one request
    the first draft is accepted about a third of the time, so a single step commits 1 or 2 tokens -- and an
    exponential average with weight 0.25 still carried ~13 % noise at one request, more than the gaps between
    widths it has to tell apart (5-10 %): the preference flipped on lucky and unlucky streaks. A 64-step mean
    carries ~4 % and still follows a change of prompt within seconds (64 steps: ~5 s at one request here).
    Seconds: the median of the last ``window`` steps, because step times have outliers that an average carries
    for a long time: the first steps of a width pay one-time costs, and a server's first steps share the CPU with
    whatever else is starting (in a benchmark starting three servers, the first drafting steps measured 2.0 tok/s
    against ~17 later, and an average starting there took three minutes of sparse exploring steps to recover).
    A median forgets a slow start after ``window // 2 + 1`` normal steps, ignores a stray slow step (a garbage
    collection) and follows a lasting change as fast."""

    recent_tokens: deque  # bounded: deque(maxlen=token_window)
    recent_seconds: deque  # bounded: deque(maxlen=window)
    samples: int = 0

    def add(self, tokens: float, seconds: float) -> None:
        self.recent_tokens.append(tokens)
        self.recent_seconds.append(seconds)
        self.samples += 1

    @property
    def tokens(self) -> float:
        return statistics.fmean(self.recent_tokens) if self.recent_tokens else 0.0

    @property
    def seconds(self) -> float:
        return statistics.median(self.recent_seconds) if self.recent_seconds else 0.0

    @property
    def rate(self) -> float:
        seconds = self.seconds
        return self.tokens / seconds if seconds > 0 else 0.0


# Widths the adaptive rule measures besides the configured one: plain width (1) and the narrow widths where a CPU
# verify costs least. On the AVX2 machine at one request (2026-12-04, worker seconds per step, drafter v5): width 2
# committed 1.34 tokens in 71.6 ms (18.7 tok/s), width 4 1.57 in 94.4 ms (16.6), plain width 1 in ~58.5 ms (17.1):
# the first draft is accepted a third of the time whatever the width, and each further verified row costs.
ADAPTIVE_WIDTHS: tuple[int, ...] = (1, 2, 3, 4, 8)


def candidate_widths(full_width: int) -> tuple[int, ...]:
    """The widths :class:`MeasuredWidthChoice` chooses among: :data:`ADAPTIVE_WIDTHS` up to ``full_width``, and it."""
    full_width = int(full_width)
    return tuple(sorted({w for w in ADAPTIVE_WIDTHS if w <= full_width} | {full_width}))


class MeasuredWidthChoice:
    """Per decode batch size, the step width -- plain (1), a narrow one, or the configured one -- that measured the
    most output tokens per second here.

    Each batch-size bucket (:meth:`bucket`) first runs :attr:`min_samples` steps of every width in :attr:`widths`
    (widest first) -- unless a smaller bucket already found every drafting width far behind plain width; then it
    starts at plain width (:meth:`_inherit`) -- then keeps the width with the highest rate (tokens per step: mean
    of the width's last :attr:`token_window` steps; seconds per step: median of its last :attr:`window` steps) and changes only when
    another one is ahead by more than :attr:`margin` (near break-even, noise would otherwise flip it every few
    steps for nothing). Every other width is explored again once :attr:`explore_every` steps have passed since it
    last ran (the most overdue first, one per step), so a change (a longer context, other prompts, a busier
    machine) is noticed. While an explored width stays behind by more than :attr:`backoff_gap` (the switching
    margin: a width that far behind could not win a switch) its interval doubles after each exploring step, up to
    :attr:`max_explore_every`: where a width loses, running it every 16th step is throughput spent on a question
    already answered (with a 20 % gap, widths 5-20 % behind ran every 16th step: at four requests on the
    AVX512-BF16 machine width 2, ~10 % slower, ran 13 % of the steps). A close race sets its interval back to :attr:`explore_every`, a change of preference every interval. Tokens per step are
    what the step committed (accepted drafts + bonus per request; one per request at plain width), seconds the
    worker's wall time for the step (CPU: synchronous). Outputs cannot depend on the choice. A change of
    preference is reported (:meth:`record`) at most once per :attr:`log_interval` seconds per bucket.

    Seconds are compared *time-paired*, as the serving benchmark pairs its runs: the preferred width runs nearly
    every step, so the median of its last :attr:`window` steps is what a step costs now, whereas the last
    :attr:`window` steps of an explored width span minutes. On a VM whose speed drifts by 10-30 % that stale median
    decided the race: at four requests a plain-width median taken in a slow patch stayed frozen while width 2, then
    preferred, ran in a fast one, and width 2 (~10 % slower paired) was kept for stretches of a hundred steps; 21 %
    of that run's steps ran a non-preferred width (2026-12-08, AVX512-BF16 machine, step log). So an explored
    width's cost is kept as the median of its last :attr:`window` *ratios* to the preferred width's median at the
    moment it ran, and its rate is its tokens over that ratio × the preferred width's current seconds; a change of
    preference re-expresses the ratios against the new preferred width. Under constant step costs this is the
    plain rate.
    """

    measures = True
    always_drafts = False

    def __init__(self, full_width: int, *, widths: Optional[tuple[int, ...]] = None, min_samples: int = 3,
                 explore_every: int = 16, max_explore_every: int = 128, backoff_gap: float = 0.05,
                 token_window: int = 64, margin: float = 0.05, window: int = 5, log_interval: float = 60.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.full_width = int(full_width)
        self.widths = tuple(sorted(set(widths))) if widths is not None else candidate_widths(self.full_width)
        if len(self.widths) < 2 or self.widths[0] < 1 or self.widths[-1] > self.full_width:
            raise ValueError(f"adaptive widths {self.widths}: need two or more between 1 and {self.full_width}")
        self.min_samples = min_samples
        self.explore_every = explore_every
        self.max_explore_every = max_explore_every
        self.backoff_gap = backoff_gap
        self.token_window = token_window
        self.margin = margin
        self.window = window
        self.log_interval = log_interval
        self._clock = clock
        self._stats: dict[tuple[int, int], _Throughput] = {}  # (bucket, width)
        self._steps: dict[int, int] = {}
        self._last_run: dict[tuple[int, int], int] = {}  # (bucket, width): the step it last ran
        self._interval: dict[tuple[int, int], int] = {}  # (bucket, width): its current exploring interval
        self._preferred: dict[int, int] = {}  # per bucket, once every width is measured
        # (bucket, width): an explored width's step seconds over the preferred width's median when it ran
        self._ratios: dict[tuple[int, int], deque] = {}
        self._logged: dict[int, tuple[float, int]] = {}  # per bucket: when, and which preference, last reported

    @staticmethod
    def bucket(batch_size: int) -> int:
        """Batch sizes up to 8 each, then powers of two (9-16 -> 16, 17-32 -> 32, ...)."""
        return batch_size if batch_size <= 8 else 1 << (batch_size - 1).bit_length()

    def _throughput(self, bucket: int, width: int) -> _Throughput:
        stats = self._stats.get((bucket, width))
        if stats is None:
            stats = self._stats[bucket, width] = _Throughput(recent_tokens=deque(maxlen=self.token_window),
                                                                recent_seconds=deque(maxlen=self.window))
        return stats

    def _choose(self, b: int, step: int) -> int:
        preferred = self._preferred.get(b)
        if preferred is None:  # warm-up: every width min_samples times, widest first
            for width in reversed(self.widths):
                if self._throughput(b, width).samples < self.min_samples:
                    return width
            return self.full_width  # (record() sets the preference once the last warm-up step is in)
        overdue = {w: (step - self._last_run.get((b, w), 0)) / self._interval.get((b, w), self.explore_every)
                   for w in self.widths if w != preferred}
        width = max(overdue, key=overdue.get)
        return width if overdue[width] >= 1.0 else preferred

    def _ratio_samples(self, bucket: int, width: int) -> deque:
        samples = self._ratios.get((bucket, width))
        if samples is None:
            samples = self._ratios[bucket, width] = deque(maxlen=self.window)
        return samples

    def _rates(self, b: int) -> dict[int, float]:
        """Tokens per second of every width at bucket ``b``: measured for the preferred width (and before there is
        one), time-paired against it for the others."""
        preferred = self._preferred.get(b)
        rates = {w: self._throughput(b, w).rate for w in self.widths}
        now = self._throughput(b, preferred).seconds if preferred is not None else 0.0
        if now > 0:
            for w in self.widths:
                ratios = self._ratios.get((b, w))
                if w != preferred and ratios:
                    rates[w] = self._throughput(b, w).tokens / (statistics.median(ratios) * now)
        return rates

    def _rebase(self, b: int, old: Optional[int], new: int) -> None:
        """Express the ratios at bucket ``b`` against the new preferred width (none yet: from the warm-up medians,
        which ran back to back)."""
        seconds = {w: self._throughput(b, w).seconds for w in self.widths}
        if old is None or not self._ratios.get((b, new)):
            for w in self.widths:
                samples = self._ratio_samples(b, w)
                samples.clear()
                if w != new and seconds[new] > 0:
                    samples.append(seconds[w] / seconds[new])
            return
        to_new = statistics.median(self._ratios[b, new])  # new's seconds / old's
        for w in self.widths:
            samples = self._ratio_samples(b, w)
            if w == new:
                samples.clear()
            elif w == old:
                samples.clear()
                samples.append(1.0 / to_new)
            else:
                rebased = [r / to_new for r in samples]
                samples.clear()
                samples.extend(rebased)

    def _inherit(self, b: int) -> None:
        """A bucket seen for the first time starts at plain width, without a warm-up, where the nearest smaller
        bucket with a preference prefers plain width with every drafting width more than :attr:`backoff_gap`
        behind: on a CPU each verified row costs more as the batch grows while the drafts win back the same τ, so
        drafting that lost at a smaller batch loses by more at a larger one. Each drafting width is first explored
        :attr:`max_explore_every` steps in (then as usual), so a wrong guess is still found. Why: every bucket used
        to warm up on three steps of each width, at four or more requests the slowest steps of all (a width-4
        step costs ~2.5 plain steps at eight requests), at each of the batch sizes 5, 6, 7, 8, 16, 32 that a
        concurrency level passes through."""
        smaller = [c for c in self._preferred if c < b]
        if not smaller:
            return
        nearest = max(smaller)
        if self._preferred[nearest] != 1 or 1 not in self.widths:
            return
        rates = self._rates(nearest)
        if any(rates[w] >= rates[1] * (1 - self.backoff_gap) for w in self.widths if w != 1):
            return
        self._preferred[b] = 1
        for w in self.widths:
            if w != 1:
                self._interval[b, w] = self.max_explore_every

    def width(self, batch_size: int) -> int:
        b = self.bucket(batch_size)
        if b not in self._steps:
            self._inherit(b)
        step = self._steps[b] = self._steps.get(b, 0) + 1
        width = self._choose(b, step)
        self._last_run[b, width] = step
        return width

    def record(self, batch_size: int, width: int, tokens: int, seconds: float) -> Optional[str]:
        """Add one step's measurement; returns a log line when the preferred width at this batch size changed (at
        most once per :attr:`log_interval` seconds per bucket)."""
        b = self.bucket(batch_size)
        if width not in self.widths:  # not one of ours (cannot happen through the worker): nothing to learn
            return None
        current = self._preferred.get(b)
        if current is not None and width != current:
            now = self._throughput(b, current).seconds
            if now > 0:
                self._ratio_samples(b, width).append(float(seconds) / now)
        self._throughput(b, width).add(float(tokens), float(seconds))
        if min(self._throughput(b, w).samples for w in self.widths) < self.min_samples:
            return None
        rate = self._rates(b)
        best = max(self.widths, key=lambda w: (rate[w], w))
        if current is None or (best != current and rate[best] > rate[current] * (1 + self.margin)):
            preferred = best
        else:
            preferred = current
        self._preferred[b] = preferred
        if preferred != current:
            self._rebase(b, current, preferred)
            if current is not None:
                for w in self.widths:
                    self._interval[b, w] = self.explore_every
        elif current is not None and width != current:  # an exploring step kept the preference
            far_behind = rate[width] < rate[preferred] * (1 - self.backoff_gap)
            interval = self._interval.get((b, width), self.explore_every)
            self._interval[b, width] = min(2 * interval, self.max_explore_every) if far_behind else self.explore_every
        now = self._clock()
        last = self._logged.get(b)
        if last is not None and (last[1] == preferred or now - last[0] < self.log_interval):
            return None
        self._logged[b] = (now, preferred)
        size = f"{b}" if b <= 8 else f"{b // 2 + 1}-{b}"
        measured = ", ".join(f"{_width_name(w)} {rate[w]:.1f}" for w in reversed(self.widths))
        return f"Domino adaptive drafting: batch size {size}: {measured} tok/s -> {_width_name(preferred)}"

    def rates(self) -> dict[int, dict[int, float]]:
        """Measured tokens/s per bucket and width (for logs and tests)."""
        out: dict[int, dict[int, float]] = {}
        for b in sorted({b for b, _ in self._stats}):
            measured = {w: r for w, r in self._rates(b).items() if self._throughput(b, w).samples}
            if measured:
                out[b] = measured
        return out

    def describe(self) -> str:
        return (f"choosing per decode batch size among widths {', '.join(map(str, self.widths))} (1 = plain-width "
                f"steps) by measured tokens/s ({MAX_SPECULATIVE_BATCH_ENV}=adaptive)")


def _width_name(width: int) -> str:
    return "plain width" if width == 1 else f"width {width}"


def width_rule(device_type: str, full_width: int, setting: str = "auto") -> Union[FixedWidthRule,
                                                                                    MeasuredWidthChoice]:
    """The worker's rule for the width of each decode step, from :func:`resolve_max_speculative_batch`."""
    resolved = resolve_max_speculative_batch(device_type, setting)
    if resolved == ADAPTIVE:
        return MeasuredWidthChoice(full_width)
    return FixedWidthRule(full_width, resolved)  # type: ignore[arg-type]


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
    "ADAPTIVE_WIDTHS",
    "FixedWidthRule",
    "MAX_SPECULATIVE_BATCH_ENV",
    "MeasuredWidthChoice",
    "WIDTH_ATTRS",
    "WidthStates",
    "candidate_widths",
    "is_default_setting",
    "resolve_max_speculative_batch",
    "step_width",
    "width_rule",
]
