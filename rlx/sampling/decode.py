"""Layer-unrolled forward pass with per-layer KV caches, for decoding.

`rlx.models.forward` scans over stacked [L, ...] weights and a stacked
[L, B, S, K, D] cache. Inside a decode loop XLA:CPU then copies each layer's
weight slice out of the stack and transposes its cache slice to
[B, K, S, D] for the attention matmuls, at every generated token (seen in the
optimised HLO). Here the weights are unstacked once per `sample` call (with
q/k/v and gate/up fused into one matmul each, cast to the compute dtype) and
each layer owns a cache buffer in the [B, K, S, D] layout the matmuls read,
so a decode step reads weights and cache in place. Keys are cached transposed,
[B, K, D, S]: the one-query score reduction then runs over D with S as the
vector lane (`python bench/sampler.py`, workload W on 2 CPU cores: 0.308 s ->
0.252 s per call, against reducing over the minor D). The math is the model's
(same parameters, `rms_norm`, `apply_rope`, masking and softmax); parity is
tested against `rlx.models.forward` and `transformers`.
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from rlx.models import decoder as decoder_lib

_NEG_INF = -0.7 * float(np.finfo(np.float32).max)  # as rlx.models.decoder

LayerCaches = tuple[dict[str, jax.Array], ...]  # per layer {'k': [B, K, D, S], 'v': [B, K, S, D]}

# Sequence axis of each cache buffer (for growing a cache between decode segments).
SEQ_AXIS = {"k": 3, "v": 2}


def prepare_layers(cfg: Any, params: Any) -> tuple[dict[str, jax.Array], ...]:
  """Stacked layer params -> per-layer dicts with fused, compute-dtype matmuls.

  'qkv' [E, (H + 2K) * D] (and 'qkv_bias') and 'gate_up' [E, 2M] replace the
  separate projections: fewer, larger matmuls per decode step.
  """
  dt = cfg.compute_dtype
  st = {k: v[...] for k, v in params["layers"].items()}
  layers = []
  for i in range(cfg.num_layers):
    e = cfg.hidden_size
    lp = {k: st[k][i] for k in ("attn_norm", "mlp_norm", "q_norm", "k_norm") if k in st}
    lp["qkv"] = jnp.concatenate([st[k][i].reshape(e, -1) for k in ("q", "k", "v")], 1).astype(dt)
    if cfg.attention_bias:
      lp["qkv_bias"] = jnp.concatenate(
          [st[k][i].reshape(-1) for k in ("q_bias", "k_bias", "v_bias")]).astype(dt)
    lp["o"] = st["o"][i].reshape(-1, e).astype(dt)  # [H * D, E]
    if cfg.attention_out_bias:
      lp["o_bias"] = st["o_bias"][i].astype(dt)
    lp["gate_up"] = jnp.concatenate([st["gate"][i], st["up"][i]], 1).astype(dt)
    lp["down"] = st["down"][i].astype(dt)
    layers.append(lp)
  return tuple(layers)


def init_layer_caches(cfg: Any, batch: int, max_len: int, dtype: Any) -> LayerCaches:
  k_shape = (batch, cfg.num_kv_heads, cfg.head_dim, max_len)
  v_shape = (batch, cfg.num_kv_heads, max_len, cfg.head_dim)
  return tuple({"k": jnp.zeros(k_shape, dtype), "v": jnp.zeros(v_shape, dtype)}
               for _ in range(cfg.num_layers))


def grow_layer_caches(caches: LayerCaches, extra: int) -> LayerCaches:
  """Appends `extra` empty slots to every cache buffer."""
  def grow(name, x):
    widths = [(0, 0)] * x.ndim
    widths[SEQ_AXIS[name]] = (0, extra)
    return jnp.pad(x, widths)
  return tuple({n: grow(n, x) for n, x in c.items()} for c in caches)


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
  h = decoder_lib.rms_norm(x_BTE, lp["attn_norm"], eps)
  qkv = decoder_lib._proj(h, lp["qkv"])
  if cfg.attention_bias:
    qkv = qkv + lp["qkv_bias"]
  hd, kd = cfg.num_heads * d, k_heads * d
  q = qkv[..., :hd].reshape(b, t, cfg.num_heads, d)
  k = qkv[..., hd:hd + kd].reshape(b, t, k_heads, d)
  v = qkv[..., hd + kd:].reshape(b, t, k_heads, d)
  if cfg.qk_norm:
    q = decoder_lib.rms_norm(q, lp["q_norm"], eps)
    k = decoder_lib.rms_norm(k, lp["k_norm"], eps)
  q, k = decoder_lib.apply_rope(q, sin, cos), decoder_lib.apply_rope(k, sin, cos)
  ck = jax.lax.dynamic_update_slice(  # [B, K, D, S]
      cache["k"], k.transpose(0, 2, 3, 1).astype(cache["k"].dtype), (0, 0, 0, cache_index))
  cv = jax.lax.dynamic_update_slice(  # [B, K, S, D]
      cache["v"], v.transpose(0, 2, 1, 3).astype(cache["v"].dtype), (0, 0, cache_index, 0))
  q_BKGTD = q.reshape(b, t, k_heads, g, d).transpose(0, 2, 3, 1, 4)
  # One query per row on CPU: a fused multiply-reduce over D reads the cache
  # once, where XLA:CPU's batched dot of tiny matrices is ~1.5x slower.
  reduce_form = t == 1 and jax.default_backend() == "cpu"
  if reduce_form:
    scores = jnp.sum(q_BKGTD[..., None].astype(jnp.float32)
                     * ck[:, :, None, None, :, :].astype(jnp.float32), axis=-2)
  else:
    scores = jnp.einsum("bkgtd,bkds->bkgts", q_BKGTD, ck.astype(dt),
                        preferred_element_type=jnp.float32)
  scores = scores * (d ** -0.5)
  m = mask_BTS[:, None, None]
  scores = jnp.where(m, scores, _NEG_INF)
  e = jnp.where(m, jnp.exp(scores - jnp.max(scores, axis=-1, keepdims=True)), 0.0)
  probs = (e / jnp.maximum(jnp.sum(e, axis=-1, keepdims=True), 1e-30)).astype(dt)
  if reduce_form:
    attn = jnp.sum(probs[..., None] * cv[:, :, None, None, :, :].astype(dt), axis=-2)
    attn = attn.transpose(0, 3, 1, 2, 4)  # [B, T, K, G, D]
  else:
    attn = jnp.einsum("bkgts,bksd->btkgd", probs, cv.astype(dt))
  attn = attn.reshape(b, t, cfg.num_heads, d)
  out = decoder_lib._proj(attn.reshape(b, t, -1), lp["o"])
  if cfg.attention_out_bias:
    out = out + lp["o_bias"]
  x_BTE = x_BTE + out

  h = decoder_lib.rms_norm(x_BTE, lp["mlp_norm"], eps)
  gate, up = jnp.split(decoder_lib._proj(h, lp["gate_up"]), 2, axis=-1)
  x_BTE = x_BTE + decoder_lib._proj(jax.nn.silu(gate) * up, lp["down"])
  return x_BTE, {"k": ck, "v": cv}
