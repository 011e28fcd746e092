"""Acceptance evaluation on the offline loop: τ with the Domino head, τ of the same backbone without it,
and a losslessness check against the target's own greedy decoding, per prompt.

τ is SGLang's accept length: mean tokens emitted per verify step, bonus included.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Optional

import torch
from tqdm import tqdm

from sglang_domino.checkpoint import load_drafter
from sglang_domino.offline import plain_generate, speculative_generate
from sglang_domino.rollout import draft_logits_dtype as draft_logits_dtype_of
from sglang_domino.rollout import resolve_draft_temperature_scale
from sglang_domino.resume import append_row, read_rows, start_rows
from sglang_domino.sampling import SamplingParams


def load_config_block_size(draft_path: str | Path) -> int:
    """The drafter's own block size (the verify width when none is given)."""
    from sglang_domino.config import DominoConfig

    return int(DominoConfig.from_pretrained(draft_path).block_size)


def read_prompts(path: str | Path) -> list[dict[str, Any]]:
    """JSONL lines ``{"prompt": str}`` or ``{"messages": [...]}``; raises ValueError naming the bad line."""
    prompts = []
    for lineno, line in enumerate(Path(path).read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}:{lineno}: not JSON ({exc})") from exc
        if not isinstance(item, dict) or not ("prompt" in item or "messages" in item):
            raise ValueError(f"{path}:{lineno}: expected an object with 'prompt' or 'messages'")
        prompts.append(item)
    if not prompts:
        raise ValueError(f"{path}: no prompts")
    return prompts


def encode_prompt(tokenizer, item: dict[str, Any]) -> torch.Tensor:
    """Chat messages go through the tokenizer's chat template (generation prompt added); plain prompts don't."""
    if "messages" in item:
        ids = tokenizer.apply_chat_template(item["messages"], add_generation_prompt=True, tokenize=True)
        if isinstance(ids, dict) or hasattr(ids, "input_ids"):
            ids = ids["input_ids"]
    else:
        ids = tokenizer(item["prompt"])["input_ids"]
    return torch.tensor([list(ids)])


def load_target(path: str | Path, dtype: torch.dtype = torch.float32):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype).eval()
    return model, tokenizer


def eos_token_ids(tokenizer, model) -> list[int]:
    """The tokenizer's EOS plus any the model's generation config lists."""
    configured = model.generation_config.eos_token_id
    configured = configured if isinstance(configured, list) else [configured]
    return sorted({t for t in (tokenizer.eos_token_id, *configured) if t is not None})


def run_variants(sampled: bool) -> list[tuple[str, bool, bool]]:
    """(name, use_head, point_mass_drafts) of the offline runs per prompt."""
    variants = [("domino", True, False), ("backbone", False, False)]
    return variants + [("domino_point_mass", True, True)] if sampled else variants


def pooled_tau(rows: list[dict[str, Any]], sampled: bool) -> dict[str, float]:
    """τ of each variant pooled over all verify steps of ``rows`` (as SGLang's avg_spec_accept_length pools
    them), the head's ratio, and the new tokens."""
    out: dict[str, float] = {"new_tokens": sum(r["new_tokens"] for r in rows)}
    for name, _, _ in run_variants(sampled):
        steps = sum(r[f"verify_steps_{name}"] for r in rows)
        out[f"tau_{name}"] = sum(r[f"accepted_{name}"] for r in rows) / max(steps, 1)
    out["tau_ratio"] = out["tau_domino"] / max(out["tau_backbone"], 1e-9)
    return out


def evaluate_prompt(target, drafter, tokenizer, item: dict[str, Any], index: int, *, max_new_tokens: int,
                    sampling: Optional[SamplingParams], eos: list[int], seed: int,
                    block_size: Optional[int] = None, draft_logits_dtype: Optional[str] = None,
                    draft_temperature_scale: Optional[float] = None) -> dict[str, Any]:
    """One prompt: Domino, the same drafter without its head, and (greedy) the target alone -> a result row.

    With sampling, also ``domino_point_mass``: the same drafter with greedy drafts verified as point masses
    (upstream SGLang's treatment of Domino drafts), to measure what sampled drafts gain."""
    ids = encode_prompt(tokenizer, item)
    row: dict[str, Any] = {"index": index, "prompt_tokens": int(ids.shape[1])}
    if "kind" in item:
        row["kind"] = item["kind"]
    outputs = {}
    for name, use_head, point_mass in run_variants(sampling is not None):
        generator = torch.Generator().manual_seed(seed + index)
        start = time.perf_counter()
        out = speculative_generate(target, drafter, ids, max_new_tokens, eos_token_ids=eos,
                                   sampling=sampling, generator=generator, use_head=use_head,
                                   block_size=block_size, point_mass_drafts=point_mass,
                                   draft_logits_dtype=draft_logits_dtype,
                                   draft_temperature_scale=draft_temperature_scale)
        row[f"tau_{name}"] = out.tau
        row[f"accepted_{name}"] = int(sum(out.accept_lengths))
        row[f"verify_steps_{name}"] = out.verify_steps
        row[f"seconds_{name}"] = time.perf_counter() - start
        outputs[name] = out.tokens
    row["new_tokens"] = len(outputs["domino"])
    if sampling is None:
        start = time.perf_counter()
        reference = plain_generate(target, ids, max_new_tokens, eos_token_ids=eos)
        row["seconds_plain"] = time.perf_counter() - start
        row["lossless"] = outputs["domino"] == reference and outputs["backbone"] == reference
    return row


def _exit_with_parent(poll_s: float = 2.0) -> None:
    """In a pool worker: exit once the parent is gone. Why: a killed ``sglang-domino eval`` otherwise leaves its
    workers decoding on every core (they are not in the parent's process group when it is killed alone)."""
    import os
    import threading

    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(poll_s)
        os._exit(1)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


def _eval_worker(worker: int, indices: list[int], target_path: str, draft_path: str, prompts: list[dict[str, Any]],
                 max_new_tokens: int, temperature: float, dtype: torch.dtype, seed: int, rows_path: Optional[str],
                 draft_logits_dtype: str, draft_temperature_scale: float, threads: Optional[int],
                 block_size: Optional[int] = None, worker_of_pool: bool = False) -> list[dict[str, Any]]:
    """Evaluate ``indices`` of ``prompts`` (one process); each finished row is appended to ``rows_path``."""
    if worker_of_pool:
        _exit_with_parent()
    if threads:
        torch.set_num_threads(threads)
    target, tokenizer = load_target(target_path, dtype)
    drafter = load_drafter(draft_path, dtype=dtype)
    eos = eos_token_ids(tokenizer, target)
    sampling = None if temperature <= 0 else SamplingParams.uniform(1, temperature=temperature)
    rows = []
    for index in tqdm(indices, desc=f"eval[{worker}]", unit="prompt", position=worker):
        row = evaluate_prompt(target, drafter, tokenizer, prompts[index], index, max_new_tokens=max_new_tokens,
                              sampling=sampling, eos=eos, seed=seed, block_size=block_size,
                              draft_logits_dtype=draft_logits_dtype,
                              draft_temperature_scale=draft_temperature_scale)
        rows.append(row)
        if rows_path:
            append_row(rows_path, row)
    return rows


def evaluate(
    target_path: str | Path,
    draft_path: str | Path,
    prompts_path: str | Path,
    *,
    max_new_tokens: int = 256,
    temperature: float = 0.0,
    dtype: torch.dtype = torch.float32,
    limit: Optional[int] = None,
    seed: int = 0,
    workers: int = 1,
    rows_path: Optional[str | Path] = None,
    block_size: Optional[int] = None,
    draft_logits_dtype: str = "auto",
    draft_temperature_scale: Optional[float] = None,
) -> dict[str, Any]:
    """Run the offline loop with and without the head (and plain greedy decoding when temperature is 0).

    ``workers`` > 1 splits the prompts over that many processes of one thread each (batch-1 decoding does
    not use a second core well). ``rows_path``: per-prompt rows are appended there as they finish, and a rerun
    with the same settings skips the prompts already done (resume). ``block_size``: the verify width
    (default the drafter's), as ``--speculative-num-draft-tokens`` sets it in SGLang. ``draft_logits_dtype``:
    precision of the drafting lm_head GEMM (auto | float32 | bfloat16, resolved as the server resolves it,
    :func:`sglang_domino.rollout.draft_logits_dtype`). ``draft_temperature_scale``: with sampling, drafts are drawn at the
    temperature × this (:func:`sglang_domino.rollout.resolve_draft_temperature_scale`; None = env or default)."""
    prompts = read_prompts(prompts_path)[:limit]
    # Resolved once here (the target's lm_head has ``dtype``), so the JSON says what the workers did.
    draft_logits_dtype = str(draft_logits_dtype_of(torch.empty(0, dtype=dtype), draft_logits_dtype)).removeprefix("torch.")
    draft_temperature_scale = resolve_draft_temperature_scale(draft_temperature_scale)
    settings = {"target": str(target_path), "draft": str(draft_path), "prompts": str(prompts_path),
                "num_prompts": len(prompts), "max_new_tokens": max_new_tokens, "temperature": temperature,
                "dtype": str(dtype), "seed": seed, "block_size": block_size, "draft_logits_dtype": draft_logits_dtype,
                "draft_temperature_scale": draft_temperature_scale}
    rows_file = Path(rows_path) if rows_path else None
    done = {int(r["index"]): r for r in read_rows(rows_file, settings)} if rows_file else {}
    if rows_file is not None and not done:
        start_rows(rows_file, settings)
    todo = [i for i in range(len(prompts)) if i not in done]
    args = (str(target_path), str(draft_path), prompts, max_new_tokens, temperature, dtype, seed,
            str(rows_file) if rows_file else None, draft_logits_dtype, draft_temperature_scale)
    rows = list(done.values())
    if workers <= 1 or len(todo) <= 1:
        rows += _eval_worker(0, todo, *args, None, block_size)
    else:
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn")) as pool:
            futures = [pool.submit(_eval_worker, w, todo[w::workers], *args, 1, block_size, True) for w in range(workers)]
            for fut in futures:
                rows += fut.result()
    per_prompt = sorted(rows, key=lambda r: r["index"])
    result: dict[str, Any] = {
        "target": str(target_path), "draft": str(draft_path), "prompts": str(prompts_path),
        "num_prompts": len(per_prompt), "max_new_tokens": max_new_tokens, "temperature": temperature,
        "dtype": str(dtype).removeprefix("torch."), "draft_logits_dtype": draft_logits_dtype,
        "draft_temperature_scale": draft_temperature_scale,
        "block_size": block_size or load_config_block_size(draft_path),
    }
    result.update(pooled_tau(per_prompt, temperature > 0))
    kinds = sorted({r["kind"] for r in per_prompt if "kind" in r})
    if kinds:  # prompts that carry a "kind" (the shipped held-out prompts do): τ per kind
        result["by_kind"] = {k: {"num_prompts": sum(r.get("kind") == k for r in per_prompt),
                                 **pooled_tau([r for r in per_prompt if r.get("kind") == k], temperature > 0)}
                             for k in kinds}
    if temperature > 0:  # sampled drafts with their probabilities vs greedy drafts as point masses
        result["tau_ratio_sampled_vs_point_mass"] = result["tau_domino"] / max(result["tau_domino_point_mass"], 1e-9)
    if temperature <= 0:
        result["lossless"] = all(r["lossless"] for r in per_prompt)
    result["provenance"] = run_provenance(draft_path, target_path)
    result["per_prompt"] = per_prompt
    return result


def run_provenance(draft_path: str | Path, target_path: str | Path) -> dict[str, Any]:
    """:func:`sglang_domino.provenance.provenance`: drafter sha256, target, commit, machine, time."""
    from sglang_domino.provenance import provenance

    return provenance(draft_path, target_path)
