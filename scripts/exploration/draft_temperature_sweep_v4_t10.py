"""Draft temperature sweep at temperature 1.0 (exploration, 2026-12-03): the T = 0.7 sweep
(``draft_temperature_sweep_v4_t07.py``) at the request temperature 1.0, on the first 8 held-out prompts.

τ for draft distributions q = filtered softmax(logits / (1.0·s)), and for greedy drafts verified as point masses
("pm", upstream's rule). Offline loop, embedded pair (drafter v4), float32, prompts × seeds {0, 1}, 128 new tokens,
width 16.
    python scripts/exploration/draft_temperature_sweep_v4_t10.py pm,1.0 8 OUT.jsonl &
    python scripts/exploration/draft_temperature_sweep_v4_t10.py 0.6,0.35 8 OUT.jsonl
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import draft_temperature_sweep_v4_t07 as sweep  # noqa: E402

if __name__ == "__main__":
    sweep.TEMPERATURE = 1.0
    sweep.main()
