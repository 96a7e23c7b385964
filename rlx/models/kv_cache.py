"""KV caches of the decoder (rlx/models/decoder.py) and the one function that writes them.

Two layouts, same math: stacked {'k', 'v'}: [L, B, S, J, E] (CACHE_AXES,
`init_cache`), carried through the layer scan; or per layer (`init_layer_caches`):
keys [B, J, E, S] and values [B, J, S, E], which a decode step reads in place.
Shape letters as in rlx/models/decoder.py; S is the number of cache slots.
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from rlx.models.config import ModelConfig

CACHE_AXES = ("layers", "batch", "cache_seq", "kv_heads", "head_dim")


def write_cache(cache: dict[str, jax.Array], k_BTJE: jax.Array, v_BTJE: jax.Array,
                index: jax.Array, layer: jax.Array | None):
  """Writes T new keys/values at slots [index, index + T) of one layer's cache.

  Returns (cache, k_BSJE, v_BSJE), the last two views of the whole cache.
  layer given: the stacked cache [L, B, S, J, E] (CACHE_AXES) carried through
  the layer scan. layer None: one layer's own cache (`init_layer_caches`),
  keys [B, J, E, S] and values [B, J, S, E], the operand layouts of the score
  and weighted-sum matmuls, so a decode step reads the cache in place (a
  [B, S, J, E] cache is transposed, i.e. copied, at every step on XLA:CPU).
  """
  k_BTJE, v_BTJE = k_BTJE.astype(cache["k"].dtype), v_BTJE.astype(cache["v"].dtype)
  if layer is not None:
    idx = (layer, 0, index, 0, 0)
    cache = {"k": jax.lax.dynamic_update_slice(cache["k"], k_BTJE[None], idx),
             "v": jax.lax.dynamic_update_slice(cache["v"], v_BTJE[None], idx)}
    k_BSJE = jax.lax.dynamic_index_in_dim(cache["k"], layer, 0, keepdims=False)
    v_BSJE = jax.lax.dynamic_index_in_dim(cache["v"], layer, 0, keepdims=False)
    return cache, k_BSJE, v_BSJE
  k_BJES = jax.lax.dynamic_update_slice(cache["k"], k_BTJE.transpose(0, 2, 3, 1),
                                        (0, 0, 0, index))
  v_BJSE = jax.lax.dynamic_update_slice(cache["v"], v_BTJE.transpose(0, 2, 1, 3),
                                        (0, 0, index, 0))
  return ({"k": k_BJES, "v": v_BJSE}, k_BJES.transpose(0, 3, 1, 2),
          v_BJSE.transpose(0, 2, 1, 3))


def init_cache(cfg: ModelConfig, batch: int, max_len: int, dtype: Any = None) -> dict:
  """Zero stacked KV cache {'k', 'v'}: [L, B, S, J, E] (CACHE_AXES), S = max_len,
  in dtype (default the compute dtype)."""
  dtype = cfg.compute_dtype if dtype is None else dtype
  shape = (cfg.num_layers, batch, max_len, cfg.num_kv_heads, cfg.head_dim)
  return {"k": jnp.zeros(shape, dtype), "v": jnp.zeros(shape, dtype)}


# Slot axis of each buffer of a per-layer cache (see `write_cache`).
LAYER_CACHE_SEQ_AXIS = {"k": 3, "v": 2}


def init_layer_caches(cfg: ModelConfig, batch: int, max_len: int,
                      dtype: Any = None) -> tuple[dict[str, jax.Array], ...]:
  """Zero per-layer KV caches: L x {'k': [B, J, E, S], 'v': [B, J, S, E]}."""
  dtype = cfg.compute_dtype if dtype is None else dtype
  J, E = cfg.num_kv_heads, cfg.head_dim
  return tuple({"k": jnp.zeros((batch, J, E, max_len), dtype),
                "v": jnp.zeros((batch, J, max_len, E), dtype)} for _ in range(cfg.num_layers))


def cache_length(cache: Any) -> int:
  """Slots S of a stacked (`init_cache`) or per-layer (`init_layer_caches`) cache."""
  if isinstance(cache, dict):
    return cache["k"].shape[2]
  return cache[0]["v"].shape[LAYER_CACHE_SEQ_AXIS["v"]]


def grow_cache(cache: Any, extra: int) -> Any:
  """Appends `extra` empty slots to a stacked or per-layer cache."""
  def grow(x, axis):
    widths = [(0, 0)] * x.ndim
    widths[axis] = (0, extra)
    return jnp.pad(x, widths)
  if isinstance(cache, dict):
    return {n: grow(x, 2) for n, x in cache.items()}
  return tuple({n: grow(x, LAYER_CACHE_SEQ_AXIS[n]) for n, x in c.items()} for c in cache)
