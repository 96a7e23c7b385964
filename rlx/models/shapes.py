"""Built-in model shapes: the Hugging Face `config.json` fields of public
models, so that a shape can be planned (`python -m rlx.plan --model=NAME`)
or benchmarked without its weights. Values are those of the models' own
config.json files (the -Instruct variants: same shapes; their eos ids).

    hf_config("qwen2.5-1.5b") -> dict   (ModelConfig.from_hf reads it)
    load_hf_config(name_or_path) -> dict   a built-in NAME, a config.json, or an HF directory
"""
from __future__ import annotations

import json
import os

SHAPES = {
    "smollm2-135m": dict(model_type="llama", architectures=["LlamaForCausalLM"],
                         hidden_size=576, num_hidden_layers=30, num_attention_heads=9,
                         num_key_value_heads=3, intermediate_size=1536, vocab_size=49152,
                         tie_word_embeddings=True, max_position_embeddings=2048,
                         rope_theta=100000.0, rms_norm_eps=1e-5, torch_dtype="bfloat16",
                         bos_token_id=1, eos_token_id=2, pad_token_id=2),
    "qwen2.5-0.5b": dict(model_type="qwen2", architectures=["Qwen2ForCausalLM"],
                         hidden_size=896, num_hidden_layers=24, num_attention_heads=14,
                         num_key_value_heads=2, intermediate_size=4864, vocab_size=151936,
                         tie_word_embeddings=True, max_position_embeddings=32768,
                         rope_theta=1000000.0, rms_norm_eps=1e-6, torch_dtype="bfloat16",
                         bos_token_id=151643, eos_token_id=151645),
    "qwen2.5-1.5b": dict(model_type="qwen2", architectures=["Qwen2ForCausalLM"],
                         hidden_size=1536, num_hidden_layers=28, num_attention_heads=12,
                         num_key_value_heads=2, intermediate_size=8960, vocab_size=151936,
                         tie_word_embeddings=True, max_position_embeddings=32768,
                         rope_theta=1000000.0, rms_norm_eps=1e-6, torch_dtype="bfloat16",
                         bos_token_id=151643, eos_token_id=151645),
    "qwen2.5-7b": dict(model_type="qwen2", architectures=["Qwen2ForCausalLM"],
                       hidden_size=3584, num_hidden_layers=28, num_attention_heads=28,
                       num_key_value_heads=4, intermediate_size=18944, vocab_size=152064,
                       tie_word_embeddings=False, max_position_embeddings=32768,
                       rope_theta=1000000.0, rms_norm_eps=1e-6, torch_dtype="bfloat16",
                       bos_token_id=151643, eos_token_id=151645),
}


def hf_config(name: str) -> dict:
  """The config.json dict of built-in shape `name` (a copy)."""
  if name not in SHAPES:
    raise KeyError(f"Unknown model shape {name!r}. Valid choices: {', '.join(SHAPES)}.")
  return json.loads(json.dumps(SHAPES[name]))


def load_hf_config(name_or_path: str) -> dict:
  """A built-in shape's config dict, or the config.json at a path (file or HF
  directory); no weights are read."""
  if name_or_path in SHAPES:
    return hf_config(name_or_path)
  path = name_or_path
  if os.path.isdir(path):
    path = os.path.join(path, "config.json")
  if not os.path.isfile(path):
    raise KeyError(f"Unknown model shape {name_or_path!r}. Valid choices: {', '.join(SHAPES)}, "
                   "or a config.json file / Hugging Face directory.")
  with open(path) as f:
    return json.load(f)
