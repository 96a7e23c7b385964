"""Shared set-up for the trainers: tokenizer, policy, reference, data rows."""
from __future__ import annotations

import dataclasses
import json
import logging
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from rlx import models
from rlx.models import hf_io


@dataclasses.dataclass
class Policy:
  """A model as the trainers see it: static config + graphdef, and params."""
  cfg: Any  # rlx.models.ModelConfig
  graphdef: Any
  params: Any
  tokenizer: Any


def _dtype(name: str):
  return jnp.dtype(name)


def task_or_none(cfg):
  from rlx.data.tasks import get_task
  if cfg.data.task == "file":
    return None
  return get_task(cfg.data.task, **dict(cfg.data.task_options))


def make_tokenizer(cfg, workdir: str):
  """The policy's tokenizer: from the checkpoint, or the built-in char tokenizer."""
  if cfg.model.init == "checkpoint":
    return hf_io.load_tokenizer(cfg.model.tokenizer or cfg.model.checkpoint)
  from rlx.data.tokenizer import make_char_tokenizer
  return make_char_tokenizer(os.path.join(workdir, "tokenizer"))


def hf_arch_dict(cfg, tokenizer) -> dict:
  """HF config dict for a model built from `config.model.arch`."""
  arch = dict(cfg.model.arch)
  family = arch.get("model_type", "qwen2")
  names = {"qwen2": "Qwen2ForCausalLM", "llama": "LlamaForCausalLM", "qwen3": "Qwen3ForCausalLM"}
  if family not in names:
    raise ValueError(f"config.model.arch.model_type={family!r}; valid: {', '.join(names)}.")
  vocab = len(tokenizer)
  d = dict(arch, vocab_size=vocab, architectures=[names[family]],
           pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
           bos_token_id=tokenizer.bos_token_id, torch_dtype=cfg.model.param_dtype)
  d.setdefault("head_dim", arch["hidden_size"] // arch["num_attention_heads"])
  return d


def attention_options(cfg) -> dict[str, Any]:
  """ModelConfig attention fields from config.model (attention, attention_blocks)."""
  bq, bkv = attention_blocks(cfg)
  return {"attention": cfg.model.attention, "attention_block_q": bq, "attention_block_kv": bkv}


def attention_blocks(cfg) -> tuple[int, int]:
  """(block_q, block_kv) of config.model.attention_blocks: 'N' or 'NQ,NKV'."""
  parts = str(cfg.model.attention_blocks).split(",")
  if len(parts) not in (1, 2) or not all(p.strip().isdigit() and int(p) > 0 for p in parts):
    raise ValueError(f"config.model.attention_blocks={cfg.model.attention_blocks!r}"
                     " is not 'N' or 'NQ,NKV' (positive block sizes).")
  bq = int(parts[0])
  return bq, int(parts[-1])


def load_policy(cfg, workdir: str, *, checkpoint: str | None = None) -> Policy:
  """Builds the initial policy (before any RL checkpoint is restored)."""
  dtype, pdtype = _dtype(cfg.model.dtype), _dtype(cfg.model.param_dtype)
  ckpt = checkpoint or (cfg.model.checkpoint if cfg.model.init == "checkpoint" else None)
  if ckpt:
    tok = hf_io.load_tokenizer(cfg.model.tokenizer or ckpt)
    mcfg, _, params = hf_io.load_hf(ckpt, dtype=dtype, param_dtype=pdtype)
    mcfg, graphdef = models.with_attention(mcfg, **attention_options(cfg))
    return Policy(mcfg, graphdef, params, tok)
  tok = make_tokenizer(cfg, workdir)
  mcfg = models.ModelConfig.from_hf(hf_arch_dict(cfg, tok), dtype=dtype, param_dtype=pdtype,
                                    **attention_options(cfg))
  graphdef, params = models.init_model(mcfg, jax.random.PRNGKey(cfg.seed))
  return Policy(mcfg, graphdef, params, tok)


def load_rows(cfg, split: str, n: int, *, tokenizer=None,
              stats: dict[str, float] | None = None) -> list[dict]:
  """Prompt rows (dicts with 'prompt' and reward columns) for a split.

  With `tokenizer`, rows of a built-in task whose prompt has more than
  config.data.max_prompt_len tokens are left out (named in the log); a task
  over a fixed dataset then fills the `n` rows from the rest of its split. With
  `stats`, the counts go there as metrics: data/{split}/rows,
  data/{split}/too_long and the task's own (`data_metrics()`, e.g.
  data/skipped: rows of the dataset that could not be read).
  """
  task = task_or_none(cfg)
  finite = tokenizer is not None and hasattr(task, "problems")  # a fixed dataset: filter all
  rows = _load_rows(cfg, task, split, 1 << 62 if finite else n)
  if tokenizer is not None and task is not None:
    from rlx.data.batch import encode_prompts
    lengths = [len(ids) for ids in encode_prompts(tokenizer, [r["prompt"] for r in rows], True)]
    long_ = [i for i, ln in enumerate(lengths) if ln > cfg.data.max_prompt_len]
    if long_:
      logging.warning("%s %s: left out %d row(s) with prompts over max_prompt_len=%d tokens: %s",
                      cfg.data.task, split, len(long_), cfg.data.max_prompt_len,
                      ", ".join(str(rows[i].get("id", i)) for i in long_[:20]))
    drop = set(long_)
    if stats is not None:
      stats[f"data/{split}/too_long"] = float(len(drop))
    rows = [r for i, r in enumerate(rows) if i not in drop][:n]
    if not rows:
      raise ValueError(f"no {split} row of task {cfg.data.task!r} has a prompt within "
                       f"config.data.max_prompt_len={cfg.data.max_prompt_len} tokens.")
  if stats is not None:
    stats[f"data/{split}/rows"] = float(len(rows))
    if task is not None and hasattr(task, "data_metrics"):
      stats.update(task.data_metrics())
  return rows


def _load_rows(cfg, task, split: str, n: int) -> list[dict]:
  if task is None:
    from rlx.data import load_rows as load_file_rows
    rows = load_file_rows(cfg.data.path, fields=dict(cfg.data.fields) or None)
    if split == "eval":
      return rows[-min(n, max(1, len(rows) // 10)):]
    return rows[: len(rows) - min(cfg.data.num_eval, max(1, len(rows) // 10))] or rows
  seed = cfg.seed if split == "train" else cfg.seed + 1
  return task.make_examples(seed=seed, n=n, split="train" if split == "train" else "test")


def save_json(path: str, obj: Any) -> None:
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    json.dump(obj, f, indent=1, default=str)
  os.replace(tmp, path)
