"""Draft temperature sweep (exploration, 2026-12-03): τ at temperature 0.7 for draft distributions
q = filtered softmax(logits / (0.7·s)), and for greedy drafts verified as point masses ("pm", upstream's rule).

Offline loop, embedded pair (drafter v4), float32, first 16 held-out prompts × seeds {0, 1}, 128 new tokens, width 16.
    python scripts/exploration/draft_temperature_sweep_v4_t07.py 1.0,0.35 16 OUT.jsonl &
    python scripts/exploration/draft_temperature_sweep_v4_t07.py pm,0.6 16 OUT.jsonl
The committed results (``draft_temperature_sweep_v4_t07.jsonl``) were measured with this script before the
``draft_temperature_scale`` parameter existed: it then swapped ``rollout.make_sampling_selector`` for one drawing at
T·s -- the same distribution the parameter now selects. (Its records then had no "temperature"/"prompts" fields.)
``draft_temperature_sweep_v4_t10.py`` runs this at temperature 1.0.
"""
import json
import sys
import time

import torch

from sglang_domino.checkpoint import load_drafter
from sglang_domino.embedded import HELDOUT_PROMPTS, prepare_embedded_pair
from sglang_domino.evaluate import encode_prompt, eos_token_ids, load_target, read_prompts
from sglang_domino.offline import speculative_generate
from sglang_domino.sampling import SamplingParams

TEMPERATURE = 0.7


def main() -> None:
    torch.set_num_threads(1)
    variants, n, out_path = sys.argv[1].split(","), int(sys.argv[2]), sys.argv[3]
    pair = prepare_embedded_pair()
    target, tokenizer = load_target(pair.target)
    drafter = load_drafter(pair.draft, dtype=torch.float32)
    eos = eos_token_ids(tokenizer, target)
    prompts = read_prompts(HELDOUT_PROMPTS)[:n]
    for variant in variants:
        point_mass = variant == "pm"
        scale = None if point_mass else float(variant)
        accepted = steps = 0
        start = time.time()
        for i, item in enumerate(prompts):
            ids = encode_prompt(tokenizer, item)
            for seed in (0, 1):
                out = speculative_generate(target, drafter, ids, 128, eos_token_ids=eos,
                                           sampling=SamplingParams.uniform(1, temperature=TEMPERATURE),
                                           generator=torch.Generator().manual_seed(1000 * seed + i),
                                           point_mass_drafts=point_mass, draft_logits_dtype="float32",
                                           draft_temperature_scale=scale)
                accepted += sum(out.accept_lengths)
                steps += out.verify_steps
        record = {"temperature": TEMPERATURE, "prompts": n, "variant": variant, "tau": accepted / steps,
                  "steps": steps, "tokens": accepted, "seconds": round(time.time() - start)}
        print(json.dumps(record), flush=True)
        with open(out_path, "a") as fh:
            fh.write(json.dumps(record) + "\n")


if __name__ == "__main__":
    main()
