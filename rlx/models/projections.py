"""The decoder's projections: x @ W, with LoRA adapters and an int8 / int4
base as an option of the one projection (rlx/models/decoder.py calls them in
every layer; rlx/models/lora.py builds the `Adapters`)."""
from __future__ import annotations

import flax.struct
import jax
import jax.numpy as jnp


# The projections an `Adapters` may adapt, in a fixed order (dropout key per projection).
PROJECTIONS = ("q", "k", "v", "o", "gate", "up", "down")


@flax.struct.dataclass
class Adapters:
  """LoRA adapters (and an int8 / int4 base's scales) as an option of the layer
  projections: y = x @ W + ((drop(x) @ A) @ B) * scale for each adapted W, with
  W = int * qscale dequantized per layer, inside the layer (nothing
  model-sized is materialized; the base is not differentiated).

  lora: projection name -> {"a": [L, in..., r], "b": [L, r, out...]}; {}: adapters off.
  qscales: name -> float32 scales of an int8 / int4 weight (see `dequantize`; L axis first).
  key: dropout key; None (eval, sampling, reference): no dropout.
  scale: alpha / rank. dropout: the rate on the adapter input x when key is given.
  The scanned layers see each leaf without its L axis (key: one per layer).
  """
  lora: dict
  qscales: dict
  key: jax.Array | None = None
  scale: float = flax.struct.field(pytree_node=False, default=1.0)
  dropout: float = flax.struct.field(pytree_node=False, default=0.0)

  def per_layer(self, num_layers: int) -> "Adapters":
    """The stacked form the layer scan slices: one dropout key per layer."""
    key = None if self.key is None else jax.random.split(self.key, num_layers)
    return self.replace(key=key)

  def layer(self, i: int, num_layers: int) -> "Adapters":
    """Layer i's adapters (the unrolled layers of `unstack_layers`)."""
    return jax.tree.map(lambda x: x[i], self.per_layer(num_layers))


def _proj(x_BTD: jax.Array, w_DX: jax.Array) -> jax.Array:
  """x [B, T, D] @ w [D, ...] as one 2-D matmul (XLA:CPU runs 3-D dots several
  times slower than the same work as [B*T, D] @ [D, X])."""
  B, T, D = x_BTD.shape
  out = x_BTD.reshape(B * T, D) @ w_DX.reshape(D, -1)
  return out.reshape((B, T) + w_DX.shape[1:])


def dequantize(q: jax.Array, s: jax.Array, n_in: int, dt=jnp.float32) -> jax.Array:
  """An int8 / int4 weight [in..., out...] (n_in input axes) times its float32
  scales: per output channel (s [1 (input axes)..., out...], s.ndim == q.ndim),
  or per group of the last input axis (s [in[:-1]..., G, 1, out...]: the axis
  split into G groups)."""
  if s.ndim == q.ndim:
    return (q.astype(jnp.float32) * s).astype(dt)
  a = n_in - 1
  grouped = q.reshape(q.shape[:a] + (s.shape[a], -1) + q.shape[a + 1:])
  return (grouped.astype(jnp.float32) * s).reshape(q.shape).astype(dt)


def _base_proj(x_BTI: jax.Array, lp: dict, name: str, dt) -> jax.Array:
  """x @ W for layer weight `name` (x's last axis: W's input axes flattened,
  I = D, or H * E for o). An int8 / int4 weight is dequantized here, one layer at a
  time, under jax.checkpoint: the backward pass recomputes it from the integer
  slice rather than keeping a float copy of every layer's weight."""
  I = x_BTI.shape[-1]
  as_IX = lambda w: w.reshape((I,) + w.shape[w.ndim - 1:]) if name == "o" else w
  ad = lp.get("adapters")
  if ad is None or name not in ad.qscales:
    return _proj(x_BTI, as_IX(lp[name].astype(dt)))
  deq = lambda x, q, s: _proj(x, as_IX(dequantize(q, s, 2 if name == "o" else 1, dt)))
  return jax.checkpoint(deq)(x_BTI, lp[name], ad.qscales[name])


def _adapted_proj(x_BTI: jax.Array, lp: dict, name: str, dt) -> jax.Array:
  """`_base_proj` plus the LoRA path ((drop(x) @ A) @ B) * scale if
  `lp['adapters']` adapts `name`."""
  y = _base_proj(x_BTI, lp, name, dt)
  ad = lp.get("adapters")
  if ad is None or name not in ad.lora:
    return y
  a, b = ad.lora[name]["a"], ad.lora[name]["b"]
  I, r = x_BTI.shape[-1], a.shape[-1]
  if ad.key is not None and ad.dropout > 0:
    keep = jax.random.bernoulli(jax.random.fold_in(ad.key, PROJECTIONS.index(name)),
                                1.0 - ad.dropout, x_BTI.shape)
    x_BTI = jnp.where(keep, x_BTI / (1.0 - ad.dropout), 0).astype(x_BTI.dtype)
  xa_BTR = _proj(x_BTI, a.astype(dt).reshape(I, r))
  d = _proj(xa_BTR, b.astype(dt).reshape(r, -1)) * jnp.asarray(ad.scale, dt)
  return y + d.reshape(y.shape)
