"""Reward models: *ForSequenceClassification decoders scored at the last real token.

Same backbone as the LM (rlx.models.decoder) with a `score` head [D, num_labels]
instead of an LM head, loaded from / saved to the HF layout
(`score.weight` [num_labels, D]) of Llama/Qwen2/Qwen3ForSequenceClassification.
"""
from __future__ import annotations

import os
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from rlx.models.config import SEQ_CLS_ARCHITECTURES, ModelConfig
from rlx.models.decoder import init_model, positions_from_mask
from rlx.models.hf_io import load_hf, save_hf


def last_token_index(mask_BT: jax.Array) -> jax.Array:
  """Index of the rightmost True of each row (0 for an all-False row) -> [B]."""
  T = mask_BT.shape[1]
  return jnp.max(jnp.where(mask_BT.astype(bool), jnp.arange(T), 0), axis=1)


def score(graphdef: nnx.GraphDef, params: nnx.State, tokens_BT: jax.Array, mask_BT: jax.Array,
          positions_BT: jax.Array | None = None, remat: bool | None = None) -> jax.Array:
  """Scores [B, num_labels] (float32) at the last True of mask_BT of every row.

  Works for left- and right-padded rows (positions default to
  positions_from_mask(mask_BT)); matches HF's pooling at the rightmost non-pad
  token when pad tokens are exactly the masked positions.
  """
  mask_BT = mask_BT.astype(bool)
  if positions_BT is None:
    positions_BT = positions_from_mask(mask_BT)
  model = nnx.merge(graphdef, params)
  if not model.cfg.is_reward_model:
    raise ValueError("score() needs a reward-model config (one of "
                     f"{', '.join(SEQ_CLS_ARCHITECTURES)}), got {model.cfg.architectures[0]}.")
  hidden_BTD, _ = model(tokens_BT, positions_BT, mask_BT, return_hidden=True, remat=remat)
  idx_B = last_token_index(mask_BT)
  h_B1D = jnp.take_along_axis(hidden_BTD, idx_B[:, None, None], axis=1)
  return model.head(h_B1D)[:, 0, :]


def load_reward_model(path: str | os.PathLike, dtype: Any = None, param_dtype: Any = None,
                      sharding_fn=None) -> tuple[ModelConfig, nnx.GraphDef, nnx.State]:
  """Loads a *ForSequenceClassification HF dir -> (cfg, graphdef, params)."""
  return load_hf(path, dtype=dtype, param_dtype=param_dtype, sharding_fn=sharding_fn,
                 architectures=SEQ_CLS_ARCHITECTURES)


def save_reward_model(path: str | os.PathLike, cfg: ModelConfig, params: nnx.State,
                      tokenizer: Any = None, **kw) -> str:
  """Writes a *ForSequenceClassification HF dir (score.weight, no lm_head)."""
  if not cfg.is_reward_model:
    raise ValueError(f"save_reward_model needs a reward-model config, got {cfg.architectures}.")
  return save_hf(path, cfg, params, tokenizer=tokenizer, **kw)


def init_reward_model(cfg: ModelConfig, key: jax.Array, num_labels: int | None = None):
  """Random reward model of cfg's backbone -> (cfg, graphdef, params)."""
  rm_cfg = cfg.as_reward_model(num_labels or (cfg.num_labels if cfg.is_reward_model else 1))
  graphdef, params = init_model(rm_cfg, key)
  return rm_cfg, graphdef, params


def reward_model_from_lm(cfg: ModelConfig, params: nnx.State, key: jax.Array,
                         num_labels: int = 1) -> tuple[ModelConfig, nnx.GraphDef, nnx.State]:
  """A reward model that starts from an LM's backbone and a fresh N(0, 0.02) score head.

  The LM head (or tied embedding use) is dropped; the embedding is kept.
  """
  rm_cfg, graphdef, rm_params = init_reward_model(cfg, key, num_labels)
  pure = nnx.to_pure_dict(params)
  pure.pop("lm_head", None)
  pure["score"] = nnx.to_pure_dict(rm_params)["score"]
  nnx.replace_by_pure_dict(rm_params, pure)
  return rm_cfg, graphdef, rm_params
