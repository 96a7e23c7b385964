"""Aggregation of a per-token loss l[i, t] into a scalar (docs/methods.md section 4).

| mode                | weight of a valid token          |
|---------------------|----------------------------------|
| token_mean          | 1 / sum of all m  (DAPO)         |
| seq_mean_token_mean | 1 / (N * L_i)     (original GRPO) |
| seq_mean_token_sum  | 1 / N                            |
| constant            | 1 / (N * L_max)   (Dr. GRPO)     |

L_i = sum_t m[i, t]. N counts the completions with at least one valid token,
so fully masked padding rows change nothing (this matches verl's
`seq_mask`). All denominators are floored at 1: an all-masked batch gives 0.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from rlx.registry import check_choice

Array = jax.Array

AGGREGATIONS = ("token_mean", "seq_mean_token_mean", "seq_mean_token_sum", "constant")


def token_weights(mask_NT: Array, mode: str, max_len: int | None = None,
                  dtype: jnp.dtype = jnp.float32) -> Array:
  """Weight of every token under aggregation `mode` (0 on masked tokens)."""
  check_choice(mode, AGGREGATIONS, "mode", "token_weights")
  m = (mask_NT > 0).astype(dtype)
  len_N = m.sum(-1)
  n_seq = jnp.maximum((len_N > 0).sum().astype(dtype), 1.0)
  if mode == "token_mean":
    return m / jnp.maximum(m.sum(), 1.0)
  if mode == "seq_mean_token_mean":
    return m / (n_seq * jnp.maximum(len_N, 1.0))[:, None]
  if mode == "seq_mean_token_sum":
    return m / n_seq
  l_max = mask_NT.shape[1] if max_len is None else max_len
  return m / (n_seq * l_max)


def aggregate(loss_NT: Array, mask_NT: Array, mode: str,
              max_len: int | None = None) -> Array:
  """sum_{i,t} w[i,t] l[i,t] with the weights of `mode`; masked entries ignored."""
  w = token_weights(mask_NT, mode, max_len, loss_NT.dtype)
  return jnp.sum(jnp.where(mask_NT > 0, loss_NT, jnp.zeros((), loss_NT.dtype)) * w)


def masked_mean(x: Array, mask: Array) -> Array:
  """Mean of x over mask > 0 (0 if nothing is valid)."""
  m = (mask > 0)
  return jnp.sum(jnp.where(m, x, 0)) / jnp.maximum(m.sum(), 1).astype(x.dtype)


def masked_min(x: Array, mask: Array) -> Array:
  m = mask > 0
  return jnp.where(m.any(), jnp.min(jnp.where(m, x, jnp.inf)), 0.0).astype(x.dtype)


def masked_max(x: Array, mask: Array) -> Array:
  m = mask > 0
  return jnp.where(m.any(), jnp.max(jnp.where(m, x, -jnp.inf)), 0.0).astype(x.dtype)
