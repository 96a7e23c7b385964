"""Test helpers: tiny random Hugging Face checkpoints built locally (no network).

`make_tiny_checkpoint(dir, family)` writes config.json + model.safetensors made
by `transformers` (torch CPU) and a small byte-level BPE tokenizer
(`tokenizer.json`, `tokenizer_config.json`, ChatML chat template) that
`AutoTokenizer.from_pretrained(dir)` loads with the same ids as `tokenizer.json`.
Needs torch (a test dependency).
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

# Special tokens of the tiny tokenizer (ids 0..3); bytes follow as ids 4..259.
PAD, BOS, EOS, IM_START = "<|pad|>", "<|bos|>", "<|im_end|>", "<|im_start|>"
SPECIAL_TOKENS = (PAD, BOS, EOS, IM_START)
TOKENIZER_SIZE = len(SPECIAL_TOKENS) + 256
DEFAULT_VOCAB_SIZE = 272  # TOKENIZER_SIZE rounded up to a multiple of 16

CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{{ message['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")

# Qwen2's pre-tokenizer regex (transformers' Qwen2Tokenizer); used for every
# family so that AutoTokenizer and tokenizer.json agree whatever class loads it.
_QWEN2_PRETOKENIZE_REGEX = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"""
    r"""|\s*[\r\n]+|\s+(?!\S)|\s+""")

_FAMILY_CLASSES = {
    "llama": ("LlamaConfig", "LlamaForCausalLM", "LlamaForSequenceClassification"),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", "Qwen2ForSequenceClassification"),
    "qwen3": ("Qwen3Config", "Qwen3ForCausalLM", "Qwen3ForSequenceClassification"),
}


def build_tokenizer():
  """A byte-level BPE tokenizer (no merges: one token per byte) with specials.

  Returns a transformers PreTrainedTokenizerFast: pad '<|pad|>' (0), bos
  '<|bos|>' (1), eos '<|im_end|>' (2), '<|im_start|>' (3); ChatML template.
  """
  from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers
  from tokenizers import pre_tokenizers
  from transformers import PreTrainedTokenizerFast

  byte_chars = list(pre_tokenizers.ByteLevel.alphabet())
  byte_chars.sort(key=lambda c: _byte_of_char(c))
  vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS)}
  for c in byte_chars:
    vocab[c] = len(vocab)
  tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token=None, continuing_subword_prefix="",
                             end_of_word_suffix="", fuse_unk=False, byte_fallback=False))
  tok.normalizer = normalizers.NFC()
  tok.pre_tokenizer = pre_tokenizers.Sequence([
      pre_tokenizers.Split(Regex(_QWEN2_PRETOKENIZE_REGEX), behavior="isolated", invert=False),
      pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
  ])
  tok.decoder = decoders.ByteLevel()
  tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS])
  return PreTrainedTokenizerFast(
      tokenizer_object=tok, pad_token=PAD, bos_token=BOS, eos_token=EOS, unk_token=None,
      chat_template=CHAT_TEMPLATE, model_max_length=4096, clean_up_tokenization_spaces=False)


def _byte_of_char(c: str) -> int:
  """Inverse of GPT-2's bytes_to_unicode for one character."""
  bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(
      range(ord("®"), ord("ÿ") + 1))
  cs = bs[:]
  n = 0
  for b in range(256):
    if b not in bs:
      bs.append(b)
      cs.append(256 + n)
      n += 1
  return dict(zip((chr(x) for x in cs), bs))[c]


def tiny_hf_config(family: str = "qwen2", *, tied: bool = True, rope_scaling: bool = False,
                   seq_cls: bool = False, num_labels: int = 1,
                   vocab_size: int = DEFAULT_VOCAB_SIZE, **overrides: Any):
  """The transformers config of a tiny model (GQA 4 heads / 2 kv heads, 2 layers)."""
  import transformers

  if family not in _FAMILY_CLASSES:
    raise ValueError(f"Unknown family {family!r}. Valid choices: {', '.join(_FAMILY_CLASSES)}.")
  cfg_cls, lm_cls, cls_cls = (getattr(transformers, n) for n in _FAMILY_CLASSES[family])
  kw: dict[str, Any] = dict(
      vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
      num_attention_heads=4, num_key_value_heads=2, head_dim=8, max_position_embeddings=512,
      rms_norm_eps=1e-6, tie_word_embeddings=tied, pad_token_id=0, bos_token_id=1,
      eos_token_id=2, architectures=[(cls_cls if seq_cls else lm_cls).__name__])
  rope = {"rope_type": "default", "rope_theta": 10000.0}
  if rope_scaling:
    # Small original context so that low, medium and high frequencies all occur.
    rope = {"rope_type": "llama3", "rope_theta": 10000.0, "factor": 8.0,
            "low_freq_factor": 1.0, "high_freq_factor": 4.0,
            "original_max_position_embeddings": 64}
  kw["rope_parameters"] = rope
  if seq_cls:
    kw["num_labels"] = num_labels
  kw.update(overrides)
  return cfg_cls(**kw)


def make_tiny_checkpoint(path: str | os.PathLike, family: str = "qwen2", *, tied: bool = True,
                         rope_scaling: bool = False, seq_cls: bool = False, num_labels: int = 1,
                         vocab_size: int = DEFAULT_VOCAB_SIZE, seed: int = 0,
                         dtype: str = "float32", max_shard_size: str | None = None,
                         tokenizer: bool = True, **overrides: Any) -> str:
  """Writes a tiny random HF checkpoint (+ tokenizer) to `path`; returns str(path).

  family: 'llama' | 'qwen2' | 'qwen3'. Weights are random with O(1) logits
  (not transformers' 0.02 init): normal(0, 0.2) matrices, norm scales
  1 + normal(0, 0.1), biases normal(0, 0.1), so parity tests see real signal.
  overrides go to the transformers config (e.g. num_hidden_layers=3).
  max_shard_size (e.g. '20KB') makes transformers write a sharded checkpoint.
  """
  import torch
  import transformers

  config = tiny_hf_config(family, tied=tied, rope_scaling=rope_scaling, seq_cls=seq_cls,
                          num_labels=num_labels, vocab_size=vocab_size, **overrides)
  arch = config.architectures[0]
  torch.manual_seed(seed)
  model = getattr(transformers, arch)(config).eval()
  gen = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, p in model.named_parameters():
      if name.endswith("norm.weight"):
        p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=gen))
      elif name.endswith(".bias"):
        p.copy_(0.1 * torch.randn(p.shape, generator=gen))
      else:
        p.copy_(0.2 * torch.randn(p.shape, generator=gen))
  if dtype != "float32":
    model = model.to(getattr(torch, dtype))
  path = Path(path)
  path.mkdir(parents=True, exist_ok=True)
  kw = {"max_shard_size": max_shard_size} if max_shard_size else {}
  model.save_pretrained(path, **kw)
  if tokenizer:
    build_tokenizer().save_pretrained(path)
  return str(path)


def load_torch_model(path: str | os.PathLike, dtype: str = "float32"):
  """transformers model of a checkpoint dir (eager attention, eval mode)."""
  import torch
  import transformers

  arch = json.loads((Path(path) / "config.json").read_text())["architectures"][0]
  return getattr(transformers, arch).from_pretrained(
      path, dtype=getattr(torch, dtype), attn_implementation="eager").eval()


def padded_batch(seed: int, batch: int, length: int, *, side: str = "left", pad_id: int = 0,
                 low: int = len(SPECIAL_TOKENS), high: int = TOKENIZER_SIZE,
                 min_len: int = 2):
  """Random token rows of different lengths padded to `length` on `side`.

  Returns (tokens [B, T] int32, mask [B, T] bool) as numpy; row 0 is full
  length, the others have random lengths in [min_len, length]; pads = pad_id.
  """
  import numpy as np

  if side not in ("left", "right"):
    raise ValueError(f"side must be 'left' or 'right', got {side!r}.")
  rng = np.random.default_rng(seed)
  lengths = np.concatenate([[length], rng.integers(min_len, length + 1, batch - 1)])
  tokens = rng.integers(low, high, (batch, length)).astype(np.int32)
  idx = np.arange(length)[None, :]
  mask = idx >= (length - lengths[:, None]) if side == "left" else idx < lengths[:, None]
  tokens[~mask] = pad_id
  return tokens, mask


def torch_logits(model, tokens, mask, positions=None):
  """float32 numpy logits of a transformers model for (tokens, mask[, positions])."""
  import numpy as np
  import torch

  kw = {}
  if positions is not None:
    kw["position_ids"] = torch.tensor(np.array(positions), dtype=torch.long)
  with torch.no_grad():
    out = model(input_ids=torch.tensor(np.array(tokens), dtype=torch.long),
                attention_mask=torch.tensor(np.array(mask), dtype=torch.long), **kw)
  return out.logits.float().numpy()


def run_on_devices(args: list[str], devices: int, timeout: float = 300,
                   cwd: str | os.PathLike | None = None) -> dict:
  """Runs `python *args` on `devices` simulated CPU devices (XLA_FLAGS, set before
  jax starts in the child) and returns the JSON object of its last stdout line;
  a non-zero exit raises AssertionError with the end of its stderr."""
  import subprocess
  import sys
  env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
             JAX_PLATFORMS="cpu")
  root = Path(__file__).resolve().parent.parent
  env["PYTHONPATH"] = os.pathsep.join(p for p in (str(root), env.get("PYTHONPATH")) if p)
  proc = subprocess.run([sys.executable, *args], env=env, capture_output=True, text=True,
                        timeout=timeout, cwd=cwd if cwd is not None else root)
  assert proc.returncode == 0, proc.stderr[-4000:]
  return json.loads(proc.stdout.strip().splitlines()[-1])
