"""One decoder for Llama 3.x, Qwen2/2.5 and Qwen3 dense, parameterized by ModelConfig.

Layers are stored stacked (leading axis 'layers') and run with `jax.lax.scan`,
so compile time does not grow with depth. Every parameter carries logical axis
names in its `out_sharding` metadata (no eager sharding); `logical_axes(params)`
reads them back for rlx/parallel.

Parameter layout (L layers, E hidden, H heads, K kv heads, D head_dim,
M intermediate, V vocab, N num_labels):

  embed              [V, E]        ('vocab', 'embed')
  layers/attn_norm   [L, E]        ('layers', 'embed')
  layers/q           [L, E, H, D]  ('layers', 'embed', 'heads', 'head_dim')
  layers/k, v        [L, E, K, D]  ('layers', 'embed', 'kv_heads', 'head_dim')
  layers/o           [L, H, D, E]  ('layers', 'heads', 'head_dim', 'embed')
  layers/q_bias      [L, H, D]     (attention_bias)  k_bias, v_bias [L, K, D]
  layers/o_bias      [L, E]        (attention_out_bias)
  layers/q_norm, k_norm [L, D]     ('layers', 'head_dim')  (qk_norm)
  layers/mlp_norm    [L, E]
  layers/gate, up    [L, E, M]     ('layers', 'embed', 'mlp')
  layers/down        [L, M, E]     ('layers', 'mlp', 'embed')
  final_norm         [E]           ('embed',)
  lm_head            [E, V]        ('embed', 'vocab')   (causal LM, untied only)
  score              [E, N]        ('embed', 'labels')  (reward model only)

KV cache: {'k': [L, B, S, K, D], 'v': same}, axes CACHE_AXES.
"""
from __future__ import annotations

import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from rlx.models.config import ModelConfig

CACHE_AXES = ("layers", "batch", "cache_seq", "kv_heads", "head_dim")
_NEG_INF = -0.7 * float(np.finfo(np.float32).max)  # finite: fully masked rows stay finite


def _param(value: jax.Array, axes: tuple[str | None, ...]) -> nnx.Param:
  assert value.ndim == len(axes), (value.shape, axes)
  return nnx.Param(value, out_sharding=axes, eager_sharding=False)


def param_specs(cfg: ModelConfig) -> dict[str, Any]:
  """Nested dict name -> (shape, logical axes, init) of every parameter.

  init is 'normal' (N(0, 0.02)), 'ones' or 'zeros'.
  """
  L, E, H, K, D = cfg.num_layers, cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
  M, V = cfg.intermediate_size, cfg.vocab_size
  layers: dict[str, Any] = {
      "attn_norm": ((L, E), ("layers", "embed"), "ones"),
      "q": ((L, E, H, D), ("layers", "embed", "heads", "head_dim"), "normal"),
      "k": ((L, E, K, D), ("layers", "embed", "kv_heads", "head_dim"), "normal"),
      "v": ((L, E, K, D), ("layers", "embed", "kv_heads", "head_dim"), "normal"),
      "o": ((L, H, D, E), ("layers", "heads", "head_dim", "embed"), "normal"),
      "mlp_norm": ((L, E), ("layers", "embed"), "ones"),
      "gate": ((L, E, M), ("layers", "embed", "mlp"), "normal"),
      "up": ((L, E, M), ("layers", "embed", "mlp"), "normal"),
      "down": ((L, M, E), ("layers", "mlp", "embed"), "normal"),
  }
  if cfg.attention_bias:
    layers["q_bias"] = ((L, H, D), ("layers", "heads", "head_dim"), "zeros")
    layers["k_bias"] = ((L, K, D), ("layers", "kv_heads", "head_dim"), "zeros")
    layers["v_bias"] = ((L, K, D), ("layers", "kv_heads", "head_dim"), "zeros")
  if cfg.attention_out_bias:
    layers["o_bias"] = ((L, E), ("layers", "embed"), "zeros")
  if cfg.qk_norm:
    layers["q_norm"] = ((L, D), ("layers", "head_dim"), "ones")
    layers["k_norm"] = ((L, D), ("layers", "head_dim"), "ones")
  specs: dict[str, Any] = {
      "embed": ((V, E), ("vocab", "embed"), "normal"),
      "layers": layers,
      "final_norm": ((E,), ("embed",), "ones"),
  }
  if cfg.is_reward_model:
    specs["score"] = ((E, cfg.num_labels), ("embed", "labels"), "normal")
  elif not cfg.tie_word_embeddings:
    specs["lm_head"] = ((E, V), ("embed", "vocab"), "normal")
  return specs


def _init_value(key: jax.Array, shape, init: str, dtype) -> jax.Array:
  if init == "ones":
    return jnp.ones(shape, dtype)
  if init == "zeros":
    return jnp.zeros(shape, dtype)
  return (0.02 * jax.random.normal(key, shape, jnp.float32)).astype(dtype)


class LayerStack(nnx.Module):
  """Holds the stacked [L, ...] parameters of all decoder layers."""

  def __init__(self, specs: dict[str, Any], dtype, rngs: nnx.Rngs):
    for name, (shape, axes, init) in specs.items():
      setattr(self, name, _param(_init_value(rngs.params(), shape, init, dtype), axes))


def rms_norm(x: jax.Array, scale: jax.Array, eps: float) -> jax.Array:
  """HF RMSNorm: normalize in float32, cast back, multiply by scale."""
  x32 = x.astype(jnp.float32)
  y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + eps)
  return scale.astype(x.dtype) * y.astype(x.dtype)


def rope_inv_freq(cfg: ModelConfig) -> np.ndarray:
  """Inverse frequencies [D/2] (float32), with Llama-3 scaling if configured."""
  D = cfg.head_dim
  inv = 1.0 / (cfg.rope_theta ** (np.arange(0, D, 2, dtype=np.int64).astype(np.float32) / D))
  inv = inv.astype(np.float32)
  if cfg.rope_scaling is None:
    return inv
  s = cfg.rope_scaling_dict
  factor, lo, hi = s["factor"], s["low_freq_factor"], s["high_freq_factor"]
  old = s["original_max_position_embeddings"]
  low_wl, high_wl = old / lo, old / hi
  wavelen = 2 * math.pi / inv
  inv_l = np.where(wavelen > low_wl, inv / factor, inv)
  smooth = (old / wavelen - lo) / (hi - lo)
  smoothed = (1 - smooth) * inv_l / factor + smooth * inv_l
  medium = ~(wavelen < high_wl) & ~(wavelen > low_wl)
  return np.where(medium, smoothed, inv_l).astype(np.float32)


def rope_sin_cos(positions_BT: jax.Array, cfg: ModelConfig) -> tuple[jax.Array, jax.Array]:
  freqs_BTF = positions_BT.astype(jnp.float32)[..., None] * jnp.asarray(rope_inv_freq(cfg))
  return jnp.sin(freqs_BTF), jnp.cos(freqs_BTF)


def apply_rope(x_BTHD: jax.Array, sin_BTF: jax.Array, cos_BTF: jax.Array) -> jax.Array:
  """HF rotate-half RoPE, computed in float32."""
  x = x_BTHD.astype(jnp.float32)
  x1, x2 = jnp.split(x, 2, axis=-1)
  s, c = sin_BTF[:, :, None, :], cos_BTF[:, :, None, :]
  return jnp.concatenate([x1 * c - x2 * s, x2 * c + x1 * s], axis=-1).astype(x_BTHD.dtype)


def _proj(x_BTE: jax.Array, w_EX: jax.Array) -> jax.Array:
  """x [B, T, E] @ w [E, ...] as one 2-D matmul (XLA:CPU runs 3-D dots several
  times slower than the same work as [B*T, E] @ [E, X])."""
  B, T, E = x_BTE.shape
  out = x_BTE.reshape(B * T, E) @ w_EX.reshape(E, -1)
  return out.reshape((B, T) + w_EX.shape[1:])


def _layer(cfg: ModelConfig, x_BTE, lp, sin, cos, mask_BTS, cache=None, layer=None,
           cache_index=None):
  """One decoder layer. Returns (x, cache) with this layer's new K/V written in cache."""
  dt = cfg.compute_dtype
  B, T, E = x_BTE.shape
  H, K, D = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
  G = H // K
  w = lambda name: lp[name].astype(dt)

  h = rms_norm(x_BTE, lp["attn_norm"], cfg.rms_norm_eps)
  q = _proj(h, w("q"))  # [B, T, H, D]
  k = _proj(h, w("k"))  # [B, T, K, D]
  v = _proj(h, w("v"))
  if cfg.attention_bias:
    q, k, v = q + w("q_bias"), k + w("k_bias"), v + w("v_bias")
  if cfg.qk_norm:
    q = rms_norm(q, lp["q_norm"], cfg.rms_norm_eps)
    k = rms_norm(k, lp["k_norm"], cfg.rms_norm_eps)
  q, k = apply_rope(q, sin, cos), apply_rope(k, sin, cos)
  if cache is not None:
    # In-place update of the full [L, B, S, K, D] cache carried through the scan.
    idx = (layer, 0, cache_index, 0, 0)
    cache = {"k": jax.lax.dynamic_update_slice(cache["k"], k[None].astype(cache["k"].dtype), idx),
             "v": jax.lax.dynamic_update_slice(cache["v"], v[None].astype(cache["v"].dtype), idx)}
    k_all = jax.lax.dynamic_index_in_dim(cache["k"], layer, 0, keepdims=False).astype(dt)
    v_all = jax.lax.dynamic_index_in_dim(cache["v"], layer, 0, keepdims=False).astype(dt)
  else:
    k_all, v_all = k, v
  S = k_all.shape[1]
  # Batched matmuls with leading batch dims (b, k): queries of the G heads that
  # share a KV head are stacked along the query axis.
  q = q * jnp.asarray(D ** -0.5, q.dtype)  # scale the (smaller) queries, not the scores
  q_BKQD = q.reshape(B, T, K, G, D).transpose(0, 2, 3, 1, 4).reshape(B, K, G * T, D)
  k_BKSD = k_all.transpose(0, 2, 1, 3)
  v_BKSD = v_all.transpose(0, 2, 1, 3)
  scores = jnp.einsum("bkqd,bksd->bkqs", q_BKQD, k_BKSD, preferred_element_type=jnp.float32)
  # Additive mask, then softmax (its custom JVP keeps the backward to few passes
  # over the [B, K, G, T, S] scores). A fully masked row (a padding query) gets
  # uniform weights: finite, and ignored downstream.
  bias_B11TS = jnp.where(mask_BTS, 0.0, _NEG_INF).astype(jnp.float32)[:, None, None]
  probs = jax.nn.softmax(scores.reshape(B, K, G, T, S) + bias_B11TS, axis=-1).astype(dt)
  attn = jnp.einsum("bkqs,bksd->bkqd", probs.reshape(B, K, G * T, S), v_BKSD)
  attn = attn.reshape(B, K, G, T, D).transpose(0, 3, 1, 2, 4).reshape(B * T, H * D)
  out = (attn @ w("o").reshape(H * D, E)).reshape(B, T, E)
  if cfg.attention_out_bias:
    out = out + w("o_bias")
  x_BTE = x_BTE + out

  h = rms_norm(x_BTE, lp["mlp_norm"], cfg.rms_norm_eps)
  gate = _proj(h, w("gate"))
  up = _proj(h, w("up"))
  x_BTE = x_BTE + _proj(jax.nn.silu(gate) * up, w("down"))
  return x_BTE, cache


def remat_policy(remat: bool | str):
  """jax.checkpoint policy for `remat`: True / "full" recomputes the whole layer
  in the backward pass (least memory); "dots" keeps the outputs of the weight
  matmuls and recomputes only elementwise work and attention."""
  if remat is True or remat == "full":
    return None
  if remat == "dots":
    return jax.checkpoint_policies.dots_with_no_batch_dims_saveable
  raise ValueError(f"remat={remat!r}; valid: 'none', 'full', 'dots' (or a bool).")


class Decoder(nnx.Module):
  """Decoder-only LM (or reward model, see ModelConfig.is_reward_model)."""

  def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
    self.cfg = cfg
    specs = param_specs(cfg)
    pd = cfg.params_dtype
    for name, spec in specs.items():
      if name == "layers":
        self.layers = LayerStack(spec, pd, rngs)
      else:
        shape, axes, init = spec
        setattr(self, name, _param(_init_value(rngs.params(), shape, init, pd), axes))

  def head(self, hidden_BTE: jax.Array) -> jax.Array:
    """Final-norm hidden -> float32 logits [B, T, V] (or scores [B, T, N])."""
    dt = self.cfg.compute_dtype
    h = hidden_BTE.astype(dt)
    if self.cfg.is_reward_model:
      return jnp.einsum("bte,en->btn", h, self.score[...].astype(dt),
                        preferred_element_type=jnp.float32)
    B, T, E = h.shape
    h2 = h.reshape(B * T, E)
    if self.cfg.tie_word_embeddings:
      out = jax.lax.dot_general(h2, self.embed[...].astype(dt), (((1,), (1,)), ((), ())),
                                preferred_element_type=jnp.float32)
    else:
      out = jnp.matmul(h2, self.lm_head[...].astype(dt), preferred_element_type=jnp.float32)
    return out.reshape(B, T, -1)

  def __call__(self, tokens_BT: jax.Array, positions_BT: jax.Array, kv_mask_BS: jax.Array,
               cache: dict[str, jax.Array] | None = None, cache_index: Any = 0,
               return_hidden: bool = False, remat: bool | None = None):
    cfg = self.cfg
    dt = cfg.compute_dtype
    T = tokens_BT.shape[1]
    x = jnp.take(self.embed[...], tokens_BT, axis=0).astype(dt)
    sin, cos = rope_sin_cos(positions_BT, cfg)
    kv_mask_BS = kv_mask_BS.astype(bool)
    S = kv_mask_BS.shape[1]
    if cache is None:
      if S != T:
        raise ValueError(f"Without a cache kv_mask_BS must have S == T, got S={S}, T={T}.")
      q_slot_T = jnp.arange(T)
    else:
      if cache["k"].shape[2] != S:
        raise ValueError(f"kv_mask_BS has {S} slots but the cache has {cache['k'].shape[2]}.")
      cache_index = jnp.asarray(cache_index, jnp.int32)
      q_slot_T = cache_index + jnp.arange(T)
    mask_BTS = (jnp.arange(S)[None, :] <= q_slot_T[:, None])[None] & kv_mask_BS[:, None, :]
    lps = {k: v[...] for k, v in nnx.state(self.layers, nnx.Param).items()}
    remat = cfg.remat if remat is None else remat
    remat = False if remat == "none" else remat

    if cache is None:
      def body(x, lp):
        x, _ = _layer(cfg, x, lp, sin, cos, mask_BTS)
        return x, None
      if remat:
        body = jax.checkpoint(body, prevent_cse=False, policy=remat_policy(remat))
      x, _ = jax.lax.scan(body, x, lps)
      new_cache = None
    else:
      def body(carry, inp):
        x, c = carry
        lp, layer = inp
        x, c = _layer(cfg, x, lp, sin, cos, mask_BTS, c, layer, cache_index)
        return (x, c), None
      if remat:
        body = jax.checkpoint(body, prevent_cse=False)
      layer_ids = jnp.arange(cfg.num_layers, dtype=jnp.int32)
      (x, new_cache), _ = jax.lax.scan(body, (x, dict(cache)), (lps, layer_ids))

    hidden = rms_norm(x, self.final_norm[...], cfg.rms_norm_eps)
    if return_hidden:
      return hidden, new_cache
    return self.head(hidden), new_cache


# ------------------------------------------------------------------ functional API
def init_model(cfg: ModelConfig, key: jax.Array) -> tuple[nnx.GraphDef, nnx.State]:
  """Random init (N(0, 0.02) weights, unit norms, zero biases) -> (graphdef, params)."""
  graphdef, _ = abstract_model(cfg)
  return graphdef, _jit_init(cfg, key)


@functools.partial(jax.jit, static_argnums=0)
def _jit_init(cfg: ModelConfig, key: jax.Array) -> nnx.State:
  # One normal draw per (stacked) parameter: under jit with sharded outputs
  # each device only materializes its own shards (no full-size scratch).
  _, params = abstract_model(cfg)
  specs = param_specs(cfg)
  flat = [(("layers", k), v) for k, v in specs["layers"].items()]
  flat += [((k,), v) for k, v in specs.items() if k != "layers"]
  pd = cfg.params_dtype
  pure: dict[str, Any] = {"layers": {}}
  for i, (path, (shape, _, init)) in enumerate(flat):
    if init == "normal":
      value = (0.02 * jax.random.normal(jax.random.fold_in(key, i), shape, jnp.float32)).astype(pd)
    else:
      value = _init_value(None, shape, init, pd)
    if path[0] == "layers":
      pure["layers"][path[1]] = value
    else:
      pure[path[0]] = value
  nnx.replace_by_pure_dict(params, pure)
  return params


def abstract_model(cfg: ModelConfig) -> tuple[nnx.GraphDef, nnx.State]:
  """(graphdef, params of jax.ShapeDtypeStruct) without allocating anything."""
  model = nnx.eval_shape(lambda: Decoder(cfg, rngs=nnx.Rngs(params=0)))
  return nnx.split(model, nnx.Param)


def config_of(graphdef: nnx.GraphDef, params: nnx.State) -> ModelConfig:
  """The ModelConfig stored in a graphdef."""
  return nnx.merge(graphdef, params).cfg


def forward(graphdef: nnx.GraphDef, params: nnx.State, tokens_BT: jax.Array,
            positions_BT: jax.Array, kv_mask_BS: jax.Array, cache: dict | None = None,
            cache_index: Any = 0, return_hidden: bool = False, remat: bool | None = None):
  """Runs the decoder; returns (logits_BTV float32 | hidden_BTE, new_cache | None).

  Without cache: S == T and query t attends key s iff s <= t and kv_mask_BS[b, s].
  With cache (from init_cache): the T new K/V go to slots [cache_index,
  cache_index + T) of every row, and query t (slot cache_index + t) attends slot s
  iff s <= cache_index + t and kv_mask_BS[b, s] (S = cache length).
  A reward model (cfg.is_reward_model) returns scores [B, T, num_labels].
  """
  model = nnx.merge(graphdef, params)
  return model(tokens_BT, positions_BT, kv_mask_BS, cache=cache, cache_index=cache_index,
               return_hidden=return_hidden, remat=remat)


def lm_head(graphdef_or_params, params_or_hidden, hidden_BTE: jax.Array | None = None):
  """Final-norm hidden [B, T, E] -> float32 logits [B, T, V]; respects tied embeddings.

  Call as lm_head(graphdef, params, hidden) or lm_head(params, hidden) (tying is
  then read from whether params has 'lm_head'; compute dtype = hidden's dtype).
  """
  if hidden_BTE is not None:
    return nnx.merge(graphdef_or_params, params_or_hidden).head(hidden_BTE)
  params, h = graphdef_or_params, params_or_hidden
  if "score" in params:
    return jnp.einsum("bte,en->btn", h, params["score"][...].astype(h.dtype),
                      preferred_element_type=jnp.float32)
  if "lm_head" in params:
    return jnp.einsum("bte,ev->btv", h, params["lm_head"][...].astype(h.dtype),
                      preferred_element_type=jnp.float32)
  return jnp.einsum("bte,ve->btv", h, params["embed"][...].astype(h.dtype),
                    preferred_element_type=jnp.float32)


def init_cache(cfg: ModelConfig, batch: int, max_len: int, dtype: Any = None) -> dict:
  """Zero KV cache {'k', 'v'}: [L, B, max_len, K, D] in dtype (default cfg.dtype)."""
  dtype = cfg.compute_dtype if dtype is None else dtype
  shape = (cfg.num_layers, batch, max_len, cfg.num_kv_heads, cfg.head_dim)
  return {"k": jnp.zeros(shape, dtype), "v": jnp.zeros(shape, dtype)}


def positions_from_mask(mask_BT: jax.Array) -> jax.Array:
  """RoPE positions of a (left-)padded batch: cumsum(mask) - 1, clipped at 0."""
  return jnp.maximum(jnp.cumsum(mask_BT.astype(jnp.int32), axis=1) - 1, 0)


def logical_axes(params: nnx.State) -> nnx.State:
  """Same tree as params with each value replaced by its logical axes.

  The axes are jax.sharding.PartitionSpec of logical names (a tuple subclass
  and a pytree leaf), e.g. P('layers', 'embed', 'heads', 'head_dim').
  """
  return nnx.get_partition_spec(params)


def num_params(params: nnx.State) -> int:
  return int(sum(np.prod(x.shape) for x in jax.tree.leaves(params)))
