"""Layer-unrolled forward pass with per-layer KV caches, for decoding.

`rlx.models.forward` scans over stacked [L, ...] weights and a stacked
[L, B, S, K, D] cache. Inside a decode loop XLA then materialises each layer's
weight slice and cache slice, and transposes the cache to [B, K, S, D] for the
attention matmuls: copies of all weights and of the whole cache per generated
token. Here the weights are unstacked once per `sample` call and each layer
owns a cache buffer in the [B, K, S, D] layout the matmuls read, so a decode
step reads weights and cache in place. The math is the model's (same
parameters, `rms_norm`, `apply_rope`, masking and softmax); parity is tested
against `rlx.models.forward` and `transformers`.
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from rlx.models import decoder as decoder_lib

LayerCaches = tuple[dict[str, jax.Array], ...]  # per layer {'k', 'v'}: [B, K, S, D]


def unstack_layers(params: Any, num_layers: int) -> tuple[dict[str, jax.Array], ...]:
  """Stacked layer params -> one dict of arrays per layer."""
  stacked = {k: v[...] for k, v in params["layers"].items()}
  return tuple({k: v[i] for k, v in stacked.items()} for i in range(num_layers))


def init_layer_caches(cfg: Any, batch: int, max_len: int, dtype: Any) -> LayerCaches:
  shape = (batch, cfg.num_kv_heads, max_len, cfg.head_dim)
  return tuple({"k": jnp.zeros(shape, dtype), "v": jnp.zeros(shape, dtype)}
               for _ in range(cfg.num_layers))


def forward_unrolled(cfg: Any, params: Any, layers: tuple[dict[str, jax.Array], ...],
                     tokens_BT: jax.Array, positions_BT: jax.Array, kv_mask_BS: jax.Array,
                     caches: LayerCaches, cache_index: jax.Array) -> tuple[jax.Array, LayerCaches]:
  """Same contract as `rlx.models.forward(..., cache=..., return_hidden=True)`.

  Returns (final-norm hidden [B, T, E], new per-layer caches).
  """
  dt = cfg.compute_dtype
  t = tokens_BT.shape[1]
  s = kv_mask_BS.shape[1]
  x = jnp.take(params["embed"][...], tokens_BT, axis=0).astype(dt)
  sin, cos = decoder_lib.rope_sin_cos(positions_BT, cfg)
  cache_index = jnp.asarray(cache_index, jnp.int32)
  q_slot_T = cache_index + jnp.arange(t)
  mask_BTS = (jnp.arange(s)[None, :] <= q_slot_T[:, None])[None] & kv_mask_BS.astype(bool)[:, None]
  new_caches = []
  for lp, cache in zip(layers, caches):
    x, cache = _layer(cfg, x, lp, sin, cos, mask_BTS, cache, cache_index)
    new_caches.append(cache)
  hidden = decoder_lib.rms_norm(x, params["final_norm"][...], cfg.rms_norm_eps)
  return hidden, tuple(new_caches)


def _layer(cfg: Any, x_BTE: jax.Array, lp: dict[str, jax.Array], sin: jax.Array, cos: jax.Array,
           mask_BTS: jax.Array, cache: dict[str, jax.Array], cache_index: jax.Array
           ) -> tuple[jax.Array, dict[str, jax.Array]]:
  """One decoder layer (as `rlx.models.decoder._layer`) on a [B, K, S, D] cache."""
  dt = cfg.compute_dtype
  b, t, _ = x_BTE.shape
  k_heads, d = cfg.num_kv_heads, cfg.head_dim
  g = cfg.num_heads // k_heads
  eps = cfg.rms_norm_eps
  w = lambda name: lp[name].astype(dt)

  h = decoder_lib.rms_norm(x_BTE, lp["attn_norm"], eps)
  q = jnp.einsum("bte,ehd->bthd", h, w("q"))
  k = jnp.einsum("bte,ekd->btkd", h, w("k"))
  v = jnp.einsum("bte,ekd->btkd", h, w("v"))
  if cfg.attention_bias:
    q, k, v = q + w("q_bias"), k + w("k_bias"), v + w("v_bias")
  if cfg.qk_norm:
    q = decoder_lib.rms_norm(q, lp["q_norm"], eps)
    k = decoder_lib.rms_norm(k, lp["k_norm"], eps)
  q, k = decoder_lib.apply_rope(q, sin, cos), decoder_lib.apply_rope(k, sin, cos)
  idx = (0, 0, cache_index, 0)
  ck = jax.lax.dynamic_update_slice(cache["k"], k.transpose(0, 2, 1, 3).astype(cache["k"].dtype), idx)
  cv = jax.lax.dynamic_update_slice(cache["v"], v.transpose(0, 2, 1, 3).astype(cache["v"].dtype), idx)
  q_BKGTD = q.reshape(b, t, k_heads, g, d).transpose(0, 2, 3, 1, 4)
  # One query per row on CPU: a fused multiply-reduce reads the cache once,
  # where XLA:CPU's batched dot of tiny matrices is ~1.5x slower.
  reduce_form = t == 1 and jax.default_backend() == "cpu"
  if reduce_form:
    scores = jnp.sum(q_BKGTD[:, :, :, :, None, :].astype(jnp.float32)
                     * ck[:, :, None, None, :, :].astype(jnp.float32), axis=-1)
  else:
    scores = jnp.einsum("bkgtd,bksd->bkgts", q_BKGTD, ck.astype(dt),
                        preferred_element_type=jnp.float32)
  scores = scores * (d ** -0.5)
  m = mask_BTS[:, None, None]
  scores = jnp.where(m, scores, decoder_lib._NEG_INF)
  e = jnp.where(m, jnp.exp(scores - jnp.max(scores, axis=-1, keepdims=True)), 0.0)
  probs = (e / jnp.maximum(jnp.sum(e, axis=-1, keepdims=True), 1e-30)).astype(dt)
  if reduce_form:
    attn = jnp.sum(probs[..., None] * cv[:, :, None, None, :, :].astype(dt), axis=-2)
    attn = attn.transpose(0, 3, 1, 2, 4)  # [B, T, K, G, D]
  else:
    attn = jnp.einsum("bkgts,bksd->btkgd", probs, cv.astype(dt))
  attn = attn.reshape(b, t, cfg.num_heads, d)
  out = jnp.einsum("bthd,hde->bte", attn, w("o"))
  if cfg.attention_out_bias:
    out = out + w("o_bias")
  x_BTE = x_BTE + out

  h = decoder_lib.rms_norm(x_BTE, lp["mlp_norm"], eps)
  gate = jnp.einsum("bte,em->btm", h, w("gate"))
  up = jnp.einsum("bte,em->btm", h, w("up"))
  x_BTE = x_BTE + jnp.einsum("btm,me->bte", jax.nn.silu(gate) * up, w("down"))
  return x_BTE, {"k": ck, "v": cv}
