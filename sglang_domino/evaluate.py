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
from sglang_domino.sampling import SamplingParams


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
) -> dict[str, Any]:
    """Run the offline loop with and without the head (and plain greedy decoding when temperature is 0)."""
    target, tokenizer = load_target(target_path, dtype)
    drafter = load_drafter(draft_path, dtype=dtype)
    eos = eos_token_ids(tokenizer, target)
    prompts = read_prompts(prompts_path)[:limit]
    sampling = None if temperature <= 0 else SamplingParams.uniform(1, temperature=temperature)
    per_prompt = []
    totals = {"domino": [0, 0], "backbone": [0, 0]}
    for index, item in enumerate(tqdm(prompts, desc="eval", unit="prompt")):
        ids = encode_prompt(tokenizer, item)
        row: dict[str, Any] = {"index": index, "prompt_tokens": int(ids.shape[1])}
        outputs = {}
        for name, use_head in (("domino", True), ("backbone", False)):
            generator = torch.Generator().manual_seed(seed + index)
            start = time.perf_counter()
            out = speculative_generate(target, drafter, ids, max_new_tokens, eos_token_ids=eos,
                                       sampling=sampling, generator=generator, use_head=use_head)
            row[f"tau_{name}"] = out.tau
            row[f"verify_steps_{name}"] = out.verify_steps
            row[f"seconds_{name}"] = time.perf_counter() - start
            totals[name][0] += sum(out.accept_lengths)
            totals[name][1] += out.verify_steps
            outputs[name] = out.tokens
        row["new_tokens"] = len(outputs["domino"])
        if sampling is None:
            start = time.perf_counter()
            reference = plain_generate(target, ids, max_new_tokens, eos_token_ids=eos)
            row["seconds_plain"] = time.perf_counter() - start
            row["lossless"] = outputs["domino"] == reference and outputs["backbone"] == reference
        per_prompt.append(row)
    result: dict[str, Any] = {
        "target": str(target_path), "draft": str(draft_path), "prompts": str(prompts_path),
        "num_prompts": len(per_prompt), "max_new_tokens": max_new_tokens, "temperature": temperature,
        "dtype": str(dtype).removeprefix("torch."),
        # τ pooled over all verify steps, as SGLang's avg_spec_accept_length pools them.
        "tau_domino": totals["domino"][0] / max(totals["domino"][1], 1),
        "tau_backbone": totals["backbone"][0] / max(totals["backbone"][1], 1),
        "per_prompt": per_prompt,
    }
    result["tau_ratio"] = result["tau_domino"] / max(result["tau_backbone"], 1e-9)
    if sampling is None:
        result["lossless"] = all(r["lossless"] for r in per_prompt)
    return result
