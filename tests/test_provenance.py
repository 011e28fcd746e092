"""sglang_domino/provenance.py: the record every result JSON carries names the exact weights, commit and machine."""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _load():
    from sglang_domino import provenance

    return provenance


def test_embedded_drafter_record_names_the_shipped_weights(tmp_path: Path) -> None:
    prov = _load()
    drafter = REPO / "sglang_domino" / "embedded" / "drafter"
    target = tmp_path / "target"
    target.mkdir()
    (target / "model.safetensors").write_bytes(b"weights")
    (target / "config.json").write_text("{}")
    rec = prov.provenance(drafter, target)
    shipped = hashlib.sha256((drafter / "model.safetensors").read_bytes()).hexdigest()
    assert rec["drafter"]["weights"]["model.safetensors"]["sha256"] == shipped
    assert rec["drafter"]["embedded"] is True
    assert rec["target"]["weights"]["model.safetensors"]["sha256"] == hashlib.sha256(b"weights").hexdigest()
    assert rec["target"]["config_sha256"] == hashlib.sha256(b"{}").hexdigest()
    assert re.fullmatch(r"[0-9a-f]{40}", rec["git"]["commit"]) and isinstance(rec["git"]["dirty"], bool)
    m = rec["machine"]
    assert m["cores"] >= 1 and isinstance(m["avx512_bf16"], bool) and m["torch"] and m["sglang"]
    assert rec["time_utc"].endswith("+00:00")
    json.dumps(rec)  # goes into a JSON file as it is


def test_no_drafter_no_target_and_a_missing_path() -> None:
    prov = _load()
    assert "drafter" not in prov.provenance(None, None)
    rec = prov.provenance("runs/does-not-exist", "HuggingFaceTB/SmolLM2-135M-Instruct")
    assert rec["drafter"]["exists"] is False and rec["drafter"]["weights"] == {}
    assert rec["target"]["path"] == "HuggingFaceTB/SmolLM2-135M-Instruct"


def test_importing_it_imports_no_torch() -> None:
    code = ("import sys; from sglang_domino.provenance import provenance; provenance(None, None); "
            "assert 'torch' not in sys.modules and 'sglang' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
