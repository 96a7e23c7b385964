"""One decoder for Llama 3.x, Qwen2/2.5 and Qwen3 dense, parameterized by ModelConfig.

Layers are stored stacked (leading axis 'layers') and run with `jax.lax.scan`,
so compile time does not grow with depth. Every parameter carries logical axis
names in its `out_sharding` metadata (no eager sharding); `logical_axes(params)`
reads them back for rlx/parallel.

Shape letters: L layers, D model width, H query heads, J KV heads (GQA:
Q = H / J query heads per KV head), E head dim, F MLP width, V vocabulary,
B batch rows, T query positions, S key/value positions (cache slots).
Parameter layout:

  embed              [V, D]        ('vocab', 'embed')
  layers/attn_norm   [L, D]        ('layers', 'embed')
  layers/q           [L, D, H, E]  ('layers', 'embed', 'heads', 'head_dim')
  layers/k, v        [L, D, J, E]  ('layers', 'embed', 'kv_heads', 'head_dim')
  layers/o           [L, H, E, D]  ('layers', 'heads', 'head_dim', 'embed')
  layers/q_bias      [L, H, E]     (attention_bias)  k_bias, v_bias [L, J, E]
  layers/o_bias      [L, D]        (attention_out_bias)
  layers/q_norm, k_norm [L, E]     ('layers', 'head_dim')  (qk_norm)
  layers/mlp_norm    [L, D]
  layers/gate, up    [L, D, F]     ('layers', 'embed', 'mlp')
  layers/down        [L, F, D]     ('layers', 'mlp', 'embed')
  final_norm         [D]           ('embed',)
  lm_head            [D, V]        ('embed', 'vocab')   (causal LM, untied only)
  score              [D, num_labels] ('embed', 'labels')  (reward model only)

The layer math (`_layer`: norms, projections, RoPE, `attend`, MLP) and the
head (`_head_logits`) exist once here; training, reference and reward models
run them through `forward`, and so does the sampler (rlx.sampling), with the
per-layer options of `forward(layers=unstack_layers(...))`.
KV caches (rlx/models/kv_cache.py): stacked {'k', 'v'}: [L, B, S, J, E]
(CACHE_AXES, `init_cache`), or per layer (`init_layer_caches`).
"""
from __future__ import annotations

import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from rlx.models.attention import attention, resolve
from rlx.models.config import ModelConfig
from rlx.models.projections import Adapters, _adapted_proj
from rlx.models.kv_cache import cache_length, write_cache
from rlx.models.sharding import constrain_batch



def _param(value: jax.Array, axes: tuple[str | None, ...]) -> nnx.Param:
  assert value.ndim == len(axes), (value.shape, axes)
  return nnx.Param(value, out_sharding=axes, eager_sharding=False)


def param_specs(cfg: ModelConfig) -> dict[str, Any]:
  """Nested dict name -> (shape, logical axes, init) of every parameter.

  init is 'normal' (N(0, 0.02)), 'ones' or 'zeros'.
  """
  L, D, H, J, E = cfg.num_layers, cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
  F, V = cfg.intermediate_size, cfg.vocab_size
  layers: dict[str, Any] = {
      "attn_norm": ((L, D), ("layers", "embed"), "ones"),
      "q": ((L, D, H, E), ("layers", "embed", "heads", "head_dim"), "normal"),
      "k": ((L, D, J, E), ("layers", "embed", "kv_heads", "head_dim"), "normal"),
      "v": ((L, D, J, E), ("layers", "embed", "kv_heads", "head_dim"), "normal"),
      "o": ((L, H, E, D), ("layers", "heads", "head_dim", "embed"), "normal"),
      "mlp_norm": ((L, D), ("layers", "embed"), "ones"),
      "gate": ((L, D, F), ("layers", "embed", "mlp"), "normal"),
      "up": ((L, D, F), ("layers", "embed", "mlp"), "normal"),
      "down": ((L, F, D), ("layers", "mlp", "embed"), "normal"),
  }
  if cfg.attention_bias:
    layers["q_bias"] = ((L, H, E), ("layers", "heads", "head_dim"), "zeros")
    layers["k_bias"] = ((L, J, E), ("layers", "kv_heads", "head_dim"), "zeros")
    layers["v_bias"] = ((L, J, E), ("layers", "kv_heads", "head_dim"), "zeros")
  if cfg.attention_out_bias:
    layers["o_bias"] = ((L, D), ("layers", "embed"), "zeros")
  if cfg.qk_norm:
    layers["q_norm"] = ((L, E), ("layers", "head_dim"), "ones")
    layers["k_norm"] = ((L, E), ("layers", "head_dim"), "ones")
  specs: dict[str, Any] = {
      "embed": ((V, D), ("vocab", "embed"), "normal"),
      "layers": layers,
      "final_norm": ((D,), ("embed",), "ones"),
  }
  if cfg.is_reward_model:
    specs["score"] = ((D, cfg.num_labels), ("embed", "labels"), "normal")
  elif not cfg.tie_word_embeddings:
    specs["lm_head"] = ((D, V), ("embed", "vocab"), "normal")
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
  """(sin, cos), each [B, T, E/2] float32."""
  freqs = positions_BT.astype(jnp.float32)[..., None] * jnp.asarray(rope_inv_freq(cfg))
  return jnp.sin(freqs), jnp.cos(freqs)


def apply_rope(x_BTHE: jax.Array, sin: jax.Array, cos: jax.Array) -> jax.Array:
  """HF rotate-half RoPE of [B, T, heads, E] (sin, cos [B, T, E/2]), in float32."""
  x = x_BTHE.astype(jnp.float32)
  x1, x2 = jnp.split(x, 2, axis=-1)
  s, c = sin[:, :, None, :], cos[:, :, None, :]
  return jnp.concatenate([x1 * c - x2 * s, x2 * c + x1 * s], axis=-1).astype(x_BTHE.dtype)


def blockwise_block(block: int, length: int, multiple: int = 8) -> tuple[int, int]:
  """(block size, padding) blockwise runs a length of T (or S) with: the
  configured block when it covers or divides T, else the fewest blocks of at most
  `block` (ceil(T / block) of them), each rounded up to a multiple of 8, so T is
  padded by < 8 per block (T = 1056, block 512: 3 blocks of 352, no padding;
  rounding T up to 1536 would add 45% to the attention)."""
  if length <= block or length % block == 0:
    return block, 0
  n = -(-length // block)
  b = -(-length // n)
  b = min(-(-b // multiple) * multiple, block)
  return b, -(-length // b) * b - length


def attend(cfg: ModelConfig, q_BTHE: jax.Array, k_BSJE: jax.Array, v_BSJE: jax.Array,
           q_offset: Any, kv_mask_BS: jax.Array, segment_ids_BT: jax.Array | None = None
           ) -> jax.Array:
  """Causal-LM attention core (GQA): `rlx.models.attention.attention` with
  cfg.attention and its block sizes. Query t sits at slot q_offset + t and
  sees slot s iff s <= q_offset + t and kv_mask_BS[b, s] (and, given
  segment_ids_BT (packed rows, T == S), the same segment id); a query that sees
  no key (a padding row) gets zeros. Keys/values are cast to q's dtype (a
  cache may be stored in another). Returns [B, T, H, E] in q's dtype.

  blockwise: a T or S longer than its block and not a multiple of it is cut
  into the fewest blocks of at most that size (`blockwise_block`; padded keys
  masked, padded queries dropped), so any block size fits every length (the
  sampler's cache is P + C - 1 slots, and its decode segments grow it). The KV-cache layouts of `rlx.models.kv_cache.write_cache` read in
  place here: XLA cancels their transposes against the ones in the dense core.
  """
  dt = q_BTHE.dtype
  B, T, H, E = q_BTHE.shape
  S = k_BSJE.shape[1]
  k_BSJE, v_BSJE = k_BSJE.astype(dt), v_BSJE.astype(dt)
  bq, bk = cfg.attention_block_q, cfg.attention_block_kv
  name = resolve(cfg.attention, cfg.attention_platform, dtype=dt, T=T, S=S, E=E,
                 static_offset=isinstance(q_offset, int))
  pad_t = pad_s = 0
  if name == "blockwise":
    bq, pad_t = blockwise_block(bq, T)
    bk, pad_s = blockwise_block(bk, S)
  q_seg_BT = kv_seg_BS = segment_ids_BT
  if pad_t:
    q_BTHE = jnp.pad(q_BTHE, ((0, 0), (0, pad_t), (0, 0), (0, 0)))
    if segment_ids_BT is not None:
      q_seg_BT = jnp.pad(segment_ids_BT, ((0, 0), (0, pad_t)))
  if pad_s:
    k_BSJE, v_BSJE = (jnp.pad(x, ((0, 0), (0, pad_s), (0, 0), (0, 0))) for x in (k_BSJE, v_BSJE))
    kv_mask_BS = jnp.pad(kv_mask_BS, ((0, 0), (0, pad_s)))
    if segment_ids_BT is not None:
      kv_seg_BS = jnp.pad(segment_ids_BT, ((0, 0), (0, pad_s)))
  out_BTHE = attention(q_BTHE, k_BSJE, v_BSJE, impl=name, causal=True, q_offset=q_offset,
                       kv_mask_BS=kv_mask_BS, q_segment_ids_BT=q_seg_BT,
                       kv_segment_ids_BS=kv_seg_BS, block_q=bq, block_kv=bk,
                       platform=cfg.attention_platform, mesh=cfg.mesh)
  return out_BTHE[:, :T]


def _layer(cfg: ModelConfig, x_BTD, lp, sin, cos, kv_mask_BS, cache=None, layer=None,
           cache_index=None, segment_ids_BT=None, prefix=None):
  """One decoder layer. Returns (x, cache, (k_BTJE, v_BTJE)): the new K/V
  (after RoPE) are also written in cache.

  lp: this layer's params (stacked names of `param_specs`, without the L axis),
  and under 'adapters' this layer's `Adapters` if any.
  cache None: attention over the T inputs only; else see
  `rlx.models.kv_cache.write_cache`.
  prefix ({'k', 'v'}: [U, P, J, E], U dividing B; no cache): read-only keys and
  values of P slots before the T inputs, each of its rows shared by B / U
  consecutive rows (a group's prompt); the inputs sit at slots P..P+T-1.
  """
  dt = cfg.compute_dtype
  B, T, _ = x_BTD.shape
  w = lambda name: lp[name].astype(dt)
  proj = lambda x, name: _adapted_proj(x, lp, name, dt)

  h_BTD = rms_norm(x_BTD, lp["attn_norm"], cfg.rms_norm_eps)
  q_BTHE = proj(h_BTD, "q")
  k_BTJE = proj(h_BTD, "k")
  v_BTJE = proj(h_BTD, "v")
  if cfg.attention_bias:
    q_BTHE, k_BTJE, v_BTJE = q_BTHE + w("q_bias"), k_BTJE + w("k_bias"), v_BTJE + w("v_bias")
  if cfg.qk_norm:
    q_BTHE = rms_norm(q_BTHE, lp["q_norm"], cfg.rms_norm_eps)
    k_BTJE = rms_norm(k_BTJE, lp["k_norm"], cfg.rms_norm_eps)
  q_BTHE, k_BTJE = apply_rope(q_BTHE, sin, cos), apply_rope(k_BTJE, sin, cos)
  new_kv = (k_BTJE, v_BTJE)
  q_offset = 0
  if prefix is not None:
    share = lambda x_UPJE: jnp.repeat(x_UPJE.astype(k_BTJE.dtype), B // x_UPJE.shape[0], axis=0)
    k_BSJE = jnp.concatenate([share(prefix["k"]), k_BTJE], axis=1)
    v_BSJE = jnp.concatenate([share(prefix["v"]), v_BTJE], axis=1)
    q_offset = prefix["k"].shape[1]
  elif cache is None:
    k_BSJE, v_BSJE = k_BTJE, v_BTJE
  else:
    cache, k_BSJE, v_BSJE = write_cache(cache, k_BTJE, v_BTJE, cache_index, layer)
    q_offset = cache_index
  attn_BTHE = attend(cfg, q_BTHE, k_BSJE, v_BSJE, q_offset, kv_mask_BS, segment_ids_BT)
  out_BTD = proj(attn_BTHE.reshape(B, T, -1), "o")
  if cfg.attention_out_bias:
    out_BTD = out_BTD + w("o_bias")
  x_BTD = x_BTD + out_BTD

  h_BTD = rms_norm(x_BTD, lp["mlp_norm"], cfg.rms_norm_eps)
  gate_BTF = proj(h_BTD, "gate")
  up_BTF = proj(h_BTD, "up")
  x_BTD = x_BTD + proj(jax.nn.silu(gate_BTF) * up_BTF, "down")
  return x_BTD, cache, new_kv


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

  def head(self, hidden_BTD: jax.Array, head_DV: jax.Array | None = None) -> jax.Array:
    """Final-norm hidden -> float32 logits [B, T, V] (or scores [B, T, num_labels]).

    head_DV: this model's `head_matrix`, laid out once by a caller that runs
    the head many times (the decode loop); None: read from the params.
    """
    dt = self.cfg.compute_dtype
    if head_DV is not None:
      return _head_logits(hidden_BTD.astype(dt), head_DV=head_DV.astype(dt))
    if self.cfg.is_reward_model:
      return _head_logits(hidden_BTD.astype(dt), head_DV=self.score[...].astype(dt))
    if self.cfg.tie_word_embeddings:
      return _head_logits(hidden_BTD.astype(dt), embed_VD=self.embed[...].astype(dt))
    return _head_logits(hidden_BTD.astype(dt), head_DV=self.lm_head[...].astype(dt))

  def __call__(self, tokens_BT: jax.Array, positions_BT: jax.Array, kv_mask_BS: jax.Array,
               cache: Any = None, cache_index: Any = 0, return_hidden: bool = False,
               remat: bool | None = None, layers: tuple[dict[str, jax.Array], ...] | None = None,
               segment_ids_BT: jax.Array | None = None, adapters: Adapters | None = None,
               prefix: dict[str, jax.Array] | None = None, return_kv: bool = False):
    cfg = self.cfg
    dt = cfg.compute_dtype
    T = tokens_BT.shape[1]
    # cfg.mesh (several devices): in a full-length pass (no cache: update, reference and
    # old log-probs) the residual stream stays split over the batch axes, here and at
    # every layer boundary (rlx.models.sharding.constrain_batch): under fsdp each device
    # computes its own rows only. Not with a cache: a decode step's few tokens are cheaper to
    # keep where XLA puts them than the fsdp-sharded weights (the [D, V] head above all)
    # a batch split makes it gather at every step.
    rows = cfg.mesh if cache is None else None
    # The token ids too: left to propagation, a batch that does not split evenly
    # (a shared-prompt pass's few rows) got a padded split whose embedding-gradient
    # scatter XLA's SPMD partitioner summed wrongly (on 2x2x2: tests/test_parallel_train.py).
    tokens_BT = constrain_batch(rows, tokens_BT)
    x_BTD = constrain_batch(rows, jnp.take(self.embed[...], tokens_BT, axis=0).astype(dt))
    sin, cos = rope_sin_cos(positions_BT, cfg)
    kv_mask_BS = kv_mask_BS.astype(bool)
    S = kv_mask_BS.shape[1]
    if prefix is not None:
      if cache is not None or segment_ids_BT is not None:
        raise ValueError("prefix (shared prompt keys/values) is for passes without a cache "
                         "or segment ids.")
      P, U = prefix["k"].shape[2], prefix["k"].shape[1]
      if S != P + T or tokens_BT.shape[0] % U:
        raise ValueError(f"With a prefix of {U} rows x {P} slots, kv_mask_BS must have "
                         f"S == P + T = {P + T} (got {S}) and the {tokens_BT.shape[0]} rows "
                         f"must be a multiple of {U}.")
    elif return_kv and cache is not None:
      raise ValueError("return_kv is for passes without a cache (the cache holds them).")
    elif cache is None:
      if S != T:
        raise ValueError(f"Without a cache kv_mask_BS must have S == T, got S={S}, T={T}.")
    else:
      if segment_ids_BT is not None:
        raise ValueError("segment_ids_BT (packed rows) is for passes without a cache.")
      if cache_length(cache) != S:
        raise ValueError(f"kv_mask_BS has {S} slots but the cache has {cache_length(cache)}.")
      cache_index = jnp.asarray(cache_index, jnp.int32)
    remat = cfg.remat if remat is None else remat
    remat = False if remat == "none" else remat

    def body(x_BTD, lp, c, layer, pre):
      x_BTD, c, kv = _layer(cfg, x_BTD, lp, sin, cos, kv_mask_BS, c, layer, cache_index,
                            segment_ids_BT, pre)
      return x_BTD, c, (kv if return_kv else None)
    if remat:
      body = jax.checkpoint(body, prevent_cse=False, policy=remat_policy(remat))

    if layers is not None:  # Python loop over per-layer params (and caches)
      if adapters is not None:
        raise ValueError("With layers=unstack_layers(...), pass the adapters to "
                         "unstack_layers, not to the forward.")
      if cache is not None and len(cache) != len(layers):
        raise ValueError(f"{len(layers)} layers but {len(cache)} layer caches.")
      new_caches, kvs = [], []
      for i, lp in enumerate(layers):
        pre = None if prefix is None else {n: x[i] for n, x in prefix.items()}
        x_BTD, c, kv = body(x_BTD, lp, None if cache is None else cache[i], None, pre)
        x_BTD = constrain_batch(rows, x_BTD)
        # As at the scan's loop boundary: XLA may not keep the residual in
        # excess (float32) precision across layers.
        x_BTD = jax.lax.optimization_barrier(x_BTD)
        new_caches.append(c)
        kvs.append(kv)
      new_cache = None if cache is None else tuple(new_caches)
      kv_out = tuple(jnp.stack(x) for x in zip(*kvs)) if return_kv else None
    else:
      lps = {k: v[...] for k, v in nnx.state(self.layers, nnx.Param).items()}
      if adapters is not None:
        lps["adapters"] = adapters.per_layer(cfg.num_layers)
      if cache is not None and not isinstance(cache, dict):
        raise ValueError("The scanned layers take a stacked cache (init_cache); per-layer "
                         "caches (init_layer_caches) need layers=unstack_layers(...).")
      layer_ids = jnp.arange(cfg.num_layers, dtype=jnp.int32)

      def step(carry, inp):
        x_BTD, c = carry
        lp, layer, pre = inp
        x_BTD, c, kv = body(x_BTD, lp, c, None if c is None else layer, pre)
        return (constrain_batch(rows, x_BTD), c), kv
      (x_BTD, new_cache), kv_out = jax.lax.scan(
          step, (x_BTD, None if cache is None else dict(cache)), (lps, layer_ids, prefix))

    hidden_BTD = rms_norm(x_BTD, self.final_norm[...], cfg.rms_norm_eps)
    if return_kv:
      new_cache = {"k": kv_out[0], "v": kv_out[1]}
    if return_hidden:
      return hidden_BTD, new_cache
    return self.head(hidden_BTD), new_cache


def _head_logits(h_BTD: jax.Array, *, head_DV: jax.Array | None = None,
                 embed_VD: jax.Array | None = None) -> jax.Array:
  """The output head: h @ head_DV, or h @ embed_VD^T (tied), as one 2-D
  matmul with float32 accumulation -> float32 [B, T, V]."""
  B, T, D = h_BTD.shape
  h2 = h_BTD.reshape(B * T, D)
  if head_DV is not None:
    out = jnp.matmul(h2, head_DV, preferred_element_type=jnp.float32)
  else:
    out = jax.lax.dot_general(h2, embed_VD, (((1,), (1,)), ((), ())),
                              preferred_element_type=jnp.float32)
  return out.reshape(B, T, -1)


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


def with_attention(cfg: ModelConfig, **kw) -> tuple[ModelConfig, nnx.GraphDef]:
  """(cfg with the given runtime fields: attention / attention_block_q /
  attention_block_kv / attention_platform / mesh, its graphdef); the params of `cfg`
  fit the new graphdef unchanged."""
  cfg = cfg.replace(**kw)
  return cfg, abstract_model(cfg)[0]


def config_of(graphdef: nnx.GraphDef, params: nnx.State) -> ModelConfig:
  """The ModelConfig stored in a graphdef."""
  return nnx.merge(graphdef, params).cfg


def forward(graphdef: nnx.GraphDef, params: nnx.State, tokens_BT: jax.Array,
            positions_BT: jax.Array, kv_mask_BS: jax.Array, cache: Any = None,
            cache_index: Any = 0, return_hidden: bool = False, remat: bool | None = None,
            layers: tuple[dict[str, jax.Array], ...] | None = None,
            segment_ids_BT: jax.Array | None = None, adapters: Adapters | None = None,
            prefix: dict[str, jax.Array] | None = None, return_kv: bool = False):
  """Runs the decoder; returns (logits_BTV float32 | hidden_BTD, new_cache | None).

  Without cache: S == T and query t attends key s iff s <= t and kv_mask_BS[b, s]
  (and, given segment_ids_BT, both carry the same id: several sequences packed
  in a row, each with its own positions_BT).
  With cache: the T new K/V go to slots [cache_index, cache_index + T) of every
  row, and query t (slot cache_index + t) attends slot s iff
  s <= cache_index + t and kv_mask_BS[b, s] (S = cache length).
  layers None: `jax.lax.scan` over the stacked layer params, with a stacked
  cache from `init_cache`. layers = `unstack_layers(cfg, params)`: a Python
  loop over them (compile time grows with depth; a decode step reads each
  layer's weights and cache in place), with per-layer caches from
  `init_layer_caches`. Same math either way.
  adapters: LoRA adapters / int8 / int4 base scales (`Adapters`) applied inside
  each projection (with `layers`, given to `unstack_layers` instead).
  Shared prompts (no cache): return_kv=True returns this pass's keys/values
  {'k', 'v'}: [L, B, T, J, E] (after RoPE) in place of the cache; a later pass
  given them as `prefix` (of U rows, U dividing its B) runs its T tokens at
  slots P..P+T-1 after them, each prefix row shared by B / U consecutive rows,
  with kv_mask_BS over the P + T slots (rlx.models.logprobs.completion_logprobs).
  A reward model (cfg.is_reward_model) returns scores [B, T, num_labels].
  """
  model = nnx.merge(graphdef, params)
  return model(tokens_BT, positions_BT, kv_mask_BS, cache=cache, cache_index=cache_index,
               return_hidden=return_hidden, remat=remat, layers=layers,
               segment_ids_BT=segment_ids_BT, adapters=adapters, prefix=prefix,
               return_kv=return_kv)


def lm_head(graphdef_or_params, params_or_hidden, hidden_BTD: jax.Array | None = None, *,
            head_DV: jax.Array | None = None):
  """Final-norm hidden [B, T, D] -> float32 logits [B, T, V]; respects tied embeddings.

  Call as lm_head(graphdef, params, hidden[, head_DV=head_matrix(cfg, params)])
  or lm_head(params, hidden) (tying is then read from whether params has
  'lm_head'; compute dtype = hidden's dtype).
  """
  if hidden_BTD is not None:
    return nnx.merge(graphdef_or_params, params_or_hidden).head(hidden_BTD, head_DV)
  params, h_BTD = graphdef_or_params, params_or_hidden
  if "score" in params or "lm_head" in params:
    w_DV = params["score" if "score" in params else "lm_head"][...]
    return _head_logits(h_BTD, head_DV=w_DV.astype(h_BTD.dtype))
  return _head_logits(h_BTD, embed_VD=params["embed"][...].astype(h_BTD.dtype))


def head_matrix(cfg: ModelConfig, params: nnx.State) -> jax.Array:
  """The output head as one [D, V] (reward model: [D, num_labels]) compute-dtype matrix.

  Passed as `head_DV` by a caller that runs the head once per decoded token,
  so a tied embedding is transposed once, not at every step.
  """
  dt = cfg.compute_dtype
  if cfg.is_reward_model:
    return params["score"][...].astype(dt)
  if cfg.tie_word_embeddings:
    return params["embed"][...].T.astype(dt)
  return params["lm_head"][...].astype(dt)


def unstack_layers(cfg: ModelConfig, params: nnx.State, adapters: Adapters | None = None
                   ) -> tuple[dict[str, jax.Array], ...]:
  """Stacked [L, ...] layer params -> L per-layer dicts in the compute dtype
  (the `layers` argument of `forward`); int8 / int4 weights stay so, and each
  layer's slice of `adapters` goes under 'adapters'.

  Not fused (one q/k/v or gate/up matmul): under XLA's excess-precision
  rewrites a fused matmul rounds its outputs differently from the scanned
  layers, which would make the sampler's log-probs differ from the trainer's.
  """
  dt = cfg.compute_dtype
  stacked = {k: v[...] for k, v in params["layers"].items()}
  cast = lambda x: x if x.dtype in (jnp.int8, jnp.int4) else x.astype(dt)
  out = tuple({k: cast(v[i]) for k, v in stacked.items()} for i in range(cfg.num_layers))
  if adapters is not None:
    for i, lp in enumerate(out):
      lp["adapters"] = adapters.layer(i, cfg.num_layers)
  return out


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
