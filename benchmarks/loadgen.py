"""Closed-loop load generator against SGLang's native ``/generate`` endpoint (streaming).

Per request: TTFT (first streamed chunk carrying a token), inter-chunk latencies (SGLang's ITL
convention: a speculative step streams several tokens in one chunk), completion tokens and the
server's ``spec_verify_ct``; per level: output tok/s over the wall time of the level, medians and
p90s, and τ = Σ completion_tokens / Σ spec_verify_ct (SGLang's accept length).
"""

from __future__ import annotations

import asyncio
import json
import statistics
import time
from dataclasses import dataclass, field
from typing import Any, Optional

import aiohttp


@dataclass
class RequestResult:
    ok: bool
    ttft_s: float = 0.0
    latency_s: float = 0.0
    chunk_gaps_s: list[float] = field(default_factory=list)
    completion_tokens: int = 0
    spec_verify_ct: int = 0
    output_ids: list[int] = field(default_factory=list)
    error: str = ""


async def generate_stream(session: aiohttp.ClientSession, url: str, payload: dict[str, Any]) -> RequestResult:
    """One streamed /generate request; payload as SGLang's GenerateReqInput (text or input_ids, sampling_params)."""
    body = {**payload, "stream": True}
    start = time.perf_counter()
    result = RequestResult(ok=False)
    last_chunk_t: Optional[float] = None
    try:
        async with session.post(f"{url}/generate", json=body) as resp:
            if resp.status != 200:
                result.error = f"HTTP {resp.status}: {(await resp.text())[:200]}"
                return result
            async for raw in resp.content:
                line = raw.decode().strip()
                if not line.startswith("data:"):
                    continue
                data = line[len("data:"):].strip()
                if data == "[DONE]":
                    break
                chunk = json.loads(data)
                now = time.perf_counter()
                meta = chunk.get("meta_info", {})
                tokens = int(meta.get("completion_tokens", 0))
                if tokens > result.completion_tokens:
                    if last_chunk_t is None:
                        result.ttft_s = now - start
                    else:
                        result.chunk_gaps_s.append(now - last_chunk_t)
                    last_chunk_t = now
                    result.completion_tokens = tokens
                result.spec_verify_ct = int(meta.get("spec_verify_ct", result.spec_verify_ct) or 0)
                if "output_ids" in chunk and isinstance(chunk["output_ids"], list):
                    result.output_ids = chunk["output_ids"]
        result.latency_s = time.perf_counter() - start
        result.ok = True
    except (aiohttp.ClientError, asyncio.TimeoutError, json.JSONDecodeError) as exc:
        result.error = repr(exc)
    return result


def _pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


async def run_level(url: str, payloads: list[dict[str, Any]], concurrency: int,
                    timeout_s: float = 1800.0) -> dict[str, Any]:
    """Send all payloads with at most ``concurrency`` in flight; returns the level's aggregate metrics."""
    semaphore = asyncio.Semaphore(concurrency)
    timeout = aiohttp.ClientTimeout(total=timeout_s)
    async with aiohttp.ClientSession(timeout=timeout) as session:

        async def one(p: dict[str, Any]) -> RequestResult:
            async with semaphore:
                return await generate_stream(session, url, p)

        start = time.perf_counter()
        results = await asyncio.gather(*(one(p) for p in payloads))
        wall = time.perf_counter() - start
    done = [r for r in results if r.ok]
    tokens = sum(r.completion_tokens for r in done)
    verify = sum(r.spec_verify_ct for r in done)
    gaps = [g for r in done for g in r.chunk_gaps_s]
    tpots = [(r.latency_s - r.ttft_s) / (r.completion_tokens - 1) for r in done if r.completion_tokens > 1]
    return {
        "concurrency": concurrency,
        "requests": len(payloads),
        "failed": len(results) - len(done),
        "errors": sorted({r.error for r in results if not r.ok})[:3],
        "wall_s": wall,
        "output_tokens": tokens,
        "output_tok_s": tokens / wall if wall > 0 else 0.0,
        "tau": (tokens / verify) if verify else None,
        "ttft_ms": {"median": 1e3 * _pct([r.ttft_s for r in done], 0.5), "p90": 1e3 * _pct([r.ttft_s for r in done], 0.9)},
        "itl_ms": {"median": 1e3 * _pct(gaps, 0.5), "p90": 1e3 * _pct(gaps, 0.9)},
        "tpot_ms": {"median": 1e3 * statistics.median(tpots) if tpots else float("nan")},
        "output_ids": [r.output_ids for r in results],
    }
