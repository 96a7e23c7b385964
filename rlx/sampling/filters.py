"""Sampling filters: pure functions on float logits [..., V].

A filter returns logits of the same shape where removed tokens are -inf, so
`log_softmax` of the result is the log-probability under the filtered,
renormalised distribution. The order applied by `filter_logits` is the one of
`transformers` generate: temperature, top-k, top-p, min-p.

Ties: top-k and top-p keep every token whose logit equals the threshold logit,
like `transformers` (`scores < threshold` is removed).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

NEG_INF = -jnp.inf


def apply_temperature(logits_NV: jax.Array, temperature: float) -> jax.Array:
  """logits / temperature (temperature > 0)."""
  if temperature <= 0:
    raise ValueError(f"temperature must be > 0 (use greedy=True for argmax), got {temperature}.")
  if temperature == 1.0:
    return logits_NV
  return logits_NV / jnp.asarray(temperature, logits_NV.dtype)


def top_k_filter(logits_NV: jax.Array, top_k: int) -> jax.Array:
  """Keeps the `top_k` largest logits of each row (0 or >= V: no-op)."""
  v = logits_NV.shape[-1]
  if top_k <= 0 or top_k >= v:
    return logits_NV
  kth_N1 = jax.lax.top_k(logits_NV, top_k)[0][..., -1:]
  return jnp.where(logits_NV < kth_N1, NEG_INF, logits_NV)


def _top_p_threshold(sorted_desc_NK: jax.Array, top_p: float) -> jax.Array:
  """Smallest kept logit given each row's logits sorted in descending order.

  A token is kept iff the probability mass of the tokens strictly before it
  (descending) is < top_p; the first token is always kept.
  """
  probs_NK = jax.nn.softmax(sorted_desc_NK.astype(jnp.float32), axis=-1)
  mass_before_NK = jnp.cumsum(probs_NK, axis=-1) - probs_NK
  num_kept_N1 = jnp.maximum(jnp.sum(mass_before_NK < top_p, axis=-1, keepdims=True), 1)
  return jnp.take_along_axis(sorted_desc_NK, num_kept_N1 - 1, axis=-1)


def top_p_filter(logits_NV: jax.Array, top_p: float) -> jax.Array:
  """Nucleus filter: keeps the smallest top set of tokens with mass >= top_p.

  Same set as `transformers.TopPLogitsWarper` (min_tokens_to_keep=1). Sorts
  each row once; top_p >= 1 is a no-op (no sort).
  """
  if not 0.0 < top_p <= 1.0:
    raise ValueError(f"top_p must be in (0, 1], got {top_p}.")
  if top_p >= 1.0:
    return logits_NV
  sorted_desc_NV = -jnp.sort(-logits_NV, axis=-1)
  threshold_N1 = _top_p_threshold(sorted_desc_NV, top_p)
  return jnp.where(logits_NV < threshold_N1, NEG_INF, logits_NV)


def top_k_top_p_filter(logits_NV: jax.Array, top_k: int, top_p: float) -> jax.Array:
  """top_k_filter then top_p_filter, sorting only the k survivors when k > 0."""
  v = logits_NV.shape[-1]
  if top_p >= 1.0:
    return top_k_filter(logits_NV, top_k)
  if top_k <= 0 or top_k >= v:
    return top_p_filter(logits_NV, top_p)
  if not 0.0 < top_p <= 1.0:
    raise ValueError(f"top_p must be in (0, 1], got {top_p}.")
  topk_desc_NK = jax.lax.top_k(logits_NV, top_k)[0]
  # The threshold is one of the top-k values, so it also applies top-k. (Tokens
  # tied with the k-th logit beyond k are left out of the top-p mass.)
  threshold_N1 = _top_p_threshold(topk_desc_NK, top_p)
  return jnp.where(logits_NV < threshold_N1, NEG_INF, logits_NV)


def min_p_filter(logits_NV: jax.Array, min_p: float) -> jax.Array:
  """Removes tokens with prob < min_p * max prob (`transformers.MinPLogitsWarper`)."""
  if not 0.0 <= min_p <= 1.0:
    raise ValueError(f"min_p must be in [0, 1], got {min_p}.")
  if min_p <= 0.0:
    return logits_NV
  # p_i < min_p * p_max  <=>  logit_i < logit_max + log(min_p).
  max_N1 = jnp.max(logits_NV, axis=-1, keepdims=True)
  threshold_N1 = max_N1 + jnp.log(jnp.asarray(min_p, logits_NV.dtype))
  return jnp.where(logits_NV < threshold_N1, NEG_INF, logits_NV)


def filter_logits(logits_NV: jax.Array, *, temperature: float = 1.0, top_k: int = 0,
                  top_p: float = 1.0, min_p: float = 0.0) -> jax.Array:
  """Temperature, then top-k, top-p and min-p filters (float32 result).

  All settings are Python scalars (static): disabled filters cost nothing.
  """
  x_NV = apply_temperature(logits_NV.astype(jnp.float32), temperature)
  x_NV = top_k_top_p_filter(x_NV, top_k, top_p)
  return min_p_filter(x_NV, min_p)


def token_logprob(logits_NV: jax.Array, tokens_N: jax.Array) -> jax.Array:
  """log softmax(logits)[token] per row, without materialising log_softmax."""
  logits_NV = logits_NV.astype(jnp.float32)
  picked_N = jnp.take_along_axis(logits_NV, tokens_N[..., None].astype(jnp.int32), axis=-1)[..., 0]
  return picked_N - jax.nn.logsumexp(logits_NV, axis=-1)
