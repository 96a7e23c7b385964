"""LoRA / QLoRA adapters on the decoder's own stacked parameter tree.

Adapters are a separate small pytree next to the frozen base params:

    adapters = {name: {"a": [L, in..., r], "b": [L, r, out...]}}

for each targeted projection `name` of `decoder.param_specs` (q, k, v, o,
gate, up, down; "in" is D, except o: H, E and down: F). The model stays a
pure function of (graphdef, params): `decoder_adapters(spec, adapters, scales)`
is the decoder's `Adapters` option, so each projection computes
x @ W + ((drop(x) @ A) @ B) * alpha / rank inside the layer scan (no merged
model-sized copy, no weight gradient of the base; the trainer differentiates
only the adapters). `adapters={}` gives the base model (adapters off): the
reference model of LoRA runs. Zero-initialized B gives logits identical to
the base. LoRA dropout (rate `spec.dropout`) acts on the adapter input only,
and only when a key is given (the update); eval, sampling and the reference
run without it. `effective_params` merges W + (alpha / rank) A @ B into a
params tree (the merged export, and the sampler's weights once per step).

QLoRA: `quantize_base` stores each targeted base weight as int8 with
per-output-channel float32 scales (`quantize="int8"`: absmax / 127 over the
input axes), or as int4 (`"int4"`, XLA packs two per byte) with one scale per
group of INT4_GROUP inputs of the weight's last input axis (absmax / 7 over
the group); the decoder dequantizes one layer at a time, inside its scan.

Why own adapters rather than qwix: qwix inserts LoRA by intercepting the
einsum / dot_general calls of Flax modules and attaching `nnx.LoRAParam`s to
the calling module; rlx's layers are one `_layer` function scanned over
stacked raw arrays (and a Python loop over `unstack_layers` in the sampler),
so there is no per-layer module to attach to, and the adapters would live
inside the model's graph rather than as a pytree with logical axes next to
the params. Here the adapters carry the logical axes of the weights they
adapt (rank axis replicated), so they shard with rlx's rules.

Export: `export_peft` writes a PEFT adapter directory (adapter_config.json +
adapter_model.safetensors) that `peft.PeftModel.from_pretrained` loads onto
the base HF checkpoint; the merged model is `effective_params` saved with
`hf_io.save_hf`.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import re
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec as P

from rlx.models.config import ModelConfig
from rlx.models.decoder import param_specs
from rlx.models.projections import Adapters, dequantize

# Logical target name -> number of input axes (after the layer axis) of its weight.
TARGETS = {"q": 1, "k": 1, "v": 1, "o": 2, "gate": 1, "up": 1, "down": 1}
# rlx name -> HF module path under model.layers.{i} (for PEFT's target_modules).
HF_MODULES = {"q": "self_attn.q_proj", "k": "self_attn.k_proj", "v": "self_attn.v_proj",
              "o": "self_attn.o_proj", "gate": "mlp.gate_proj", "up": "mlp.up_proj",
              "down": "mlp.down_proj"}
QUANTIZE = ("none", "int8", "int4")
INT4_GROUP = 64  # inputs per int4 scale (gcd with the axis length if that is not a multiple)


@dataclasses.dataclass(frozen=True)
class LoraSpec:
  """Static description of a run's adapters (hashable: a jit static argument)."""
  rank: int
  alpha: float
  targets: tuple[str, ...]      # rlx layer param names
  quantize: str = "none"        # none | int8 | int4 (QLoRA)
  dropout: float = 0.0          # on the adapter input, in the update only

  @property
  def scale(self) -> float:
    return self.alpha / self.rank


def _io_shapes(cfg: ModelConfig, name: str) -> tuple[tuple, tuple, int]:
  """(stacked shape [L, in..., out...], logical axes, number of input axes) of `name`."""
  shape, axes, _ = param_specs(cfg)["layers"][name]
  n_in = TARGETS[name]
  return shape, axes, n_in


def resolve_targets(cfg: ModelConfig, targets: Any) -> tuple[str, ...]:
  """Target names from a comma-separated list of logical names, a tuple of them,
  or a regex over parameter paths ('layers/q', 'layers/down', ...).

  Raises ValueError naming the valid choices if nothing (or a non-projection) matches.
  """
  valid = tuple(TARGETS)
  if isinstance(targets, str):
    names = [t.strip() for t in targets.split(",") if t.strip()]
  else:
    names = [str(t) for t in targets]
  if names and all(n in TARGETS for n in names):
    return tuple(n for n in valid if n in names)
  pattern = targets if isinstance(targets, str) else "|".join(names)
  try:
    rx = re.compile(pattern)
  except re.error as e:
    raise ValueError(f"config.model.lora.targets={targets!r} is neither a list of "
                     f"{', '.join(valid)} nor a valid regex ({e}).") from None
  paths = [f"layers/{n}" for n in valid]
  hit = tuple(p.split("/")[1] for p in paths if rx.fullmatch(p) or rx.search(p))
  if not hit:
    raise ValueError(f"config.model.lora.targets={targets!r} matches no projection; valid: "
                     f"{', '.join(valid)} or a regex over {', '.join(paths)}.")
  return hit


def make_spec(cfg: ModelConfig, rank: int, alpha: float, targets: Any,
              quantize: str = "none", dropout: float = 0.0) -> LoraSpec:
  """Checks the LoRA settings against the model; ValueError with the valid choices."""
  if not 0.0 <= dropout < 1.0:
    raise ValueError(f"config.model.lora.dropout={dropout}; valid: 0.0 <= dropout < 1.0.")
  if cfg.is_reward_model:
    raise ValueError("config.model.lora.rank > 0 with a reward-model head: LoRA applies to "
                     "causal-LM policies only; valid: rank=0 for reward models.")
  if quantize not in QUANTIZE:
    raise ValueError(f"config.model.lora.quantize={quantize!r} is not one of "
                     f"{', '.join(map(repr, QUANTIZE))}.")
  names = resolve_targets(cfg, targets)
  dims = {}
  for n in names:
    shape, _, n_in = _io_shapes(cfg, n)
    dims[n] = (int(np.prod(shape[1:1 + n_in])), int(np.prod(shape[1 + n_in:])))
  n = min(dims, key=lambda n: min(dims[n]))  # the smallest targeted projection
  if rank > min(dims[n]):
    raise ValueError(f"config.model.lora.rank={rank} exceeds projection {n!r} "
                     f"({dims[n][0]} x {dims[n][1]}); valid: 1..{min(dims[n])}.")
  return LoraSpec(rank=int(rank), alpha=float(alpha), targets=names, quantize=quantize,
                  dropout=float(dropout))


def init_adapters(cfg: ModelConfig, spec: LoraSpec, key: jax.Array,
                  dtype: Any = jnp.float32) -> dict[str, dict[str, jax.Array]]:
  """A ~ N(0, 1/in) (as PEFT's kaiming init, in scale), B = 0: the base model."""
  out = {}
  for i, n in enumerate(spec.targets):
    shape, _, n_in = _io_shapes(cfg, n)
    a_shape = shape[:1 + n_in] + (spec.rank,)
    b_shape = (shape[0], spec.rank) + shape[1 + n_in:]
    d_in = int(np.prod(shape[1:1 + n_in]))
    a = jax.random.normal(jax.random.fold_in(key, i), a_shape, jnp.float32) / np.sqrt(d_in)
    out[n] = {"a": a.astype(dtype), "b": jnp.zeros(b_shape, dtype)}
  return out


def logical_axes(cfg: ModelConfig, spec: LoraSpec) -> dict[str, dict[str, P]]:
  """The adapters' logical axes: A and B take their weight's axes, rank replicated."""
  out = {}
  for n in spec.targets:
    _, axes, n_in = _io_shapes(cfg, n)
    out[n] = {"a": P(*axes[:1 + n_in], None), "b": P(axes[0], None, *axes[1 + n_in:])}
  return out


def delta(spec: LoraSpec, ad: dict[str, jax.Array], w_shape: tuple[int, ...],
          n_in: int) -> jax.Array:
  """(alpha / rank) * A @ B in the weight's stacked shape [L, in..., out...], float32."""
  L, r = w_shape[0], spec.rank
  a_LIR = ad["a"].astype(jnp.float32).reshape(L, -1, r)
  b_LRO = ad["b"].astype(jnp.float32).reshape(L, r, -1)
  return (spec.scale * jnp.einsum("lir,lro->lio", a_LIR, b_LRO)).reshape(w_shape)


def quantize_base(spec: LoraSpec, params: Any) -> tuple[Any, dict[str, jax.Array]]:
  """(params with targeted weights int8 / int4, their float32 scales; see
  `projections.dequantize` for the scales' layouts)."""
  params = jax.tree.map(lambda x: x, params)  # new Variables: the input is not modified
  layers = params["layers"]
  scales = {}
  for n in spec.targets:
    w = layers[n][...].astype(jnp.float32)
    n_in = TARGETS[n]
    if spec.quantize == "int8":
      axes = tuple(range(1, 1 + n_in))
      s = jnp.maximum(jnp.max(jnp.abs(w), axis=axes, keepdims=True), 1e-12) / 127.0
      q = jnp.clip(jnp.round(w / s), -127, 127).astype(jnp.int8)
    else:  # int4, per group of the last input axis (axis n_in of [L, in..., out...])
      size = w.shape[n_in]
      g = math.gcd(INT4_GROUP, size)
      w_g = w.reshape(w.shape[:n_in] + (size // g, g) + w.shape[n_in + 1:])
      s = jnp.maximum(jnp.max(jnp.abs(w_g), axis=n_in + 1, keepdims=True), 1e-12) / 7.0
      q = jnp.clip(jnp.round(w_g / s), -7, 7).reshape(w.shape).astype(jnp.int4)
    layers[n].set_value(q)
    scales[n] = s
  return params, scales


def decoder_adapters(spec: LoraSpec, adapters: dict, scales: dict | None = None,
                     key: jax.Array | None = None) -> Adapters:
  """The decoder's `Adapters` option: `adapters` ({}: off) on the base whose
  int8 / int4 weights have `scales`; `key` turns on LoRA dropout (training only)."""
  return Adapters(lora=adapters, qscales=dict(scales or {}), key=key, scale=spec.scale,
                  dropout=spec.dropout if key is not None else 0.0)


def effective_params(spec: LoraSpec, base: Any, adapters: dict, scales: dict | None = None,
                     dtype: Any = None) -> Any:
  """The base params with W + (alpha / rank) A @ B on each adapted weight (and
  int8 / int4 weights dequantized). adapters {} : the base model (adapters off)."""
  def leaf(x):  # nnx.Variable or array
    return x[...] if hasattr(x, "get_value") else x
  out = jax.tree.map(lambda x: x, base)
  layers = out["layers"]
  for n in spec.targets:
    w = leaf(base["layers"][n])
    out_dtype = dtype or (jnp.float32 if scales and n in scales else w.dtype)
    if scales is not None and n in scales:  # per layer: vmap over the L axis
      w = jax.vmap(lambda q, s: dequantize(q, s, TARGETS[n]))(w, scales[n])
    if n in adapters:
      w = w.astype(jnp.float32) + delta(spec, adapters[n], w.shape, TARGETS[n])
    layers[n].set_value(w.astype(out_dtype))
  return out


def export_peft(path: str, cfg: ModelConfig, spec: LoraSpec, adapters: dict,
                base_model_name_or_path: str = "") -> str:
  """Writes a PEFT LoRA adapter directory. Returns path.

  PEFT's lora_A.weight is [r, in] and lora_B.weight [out, r] (torch layout,
  delta W = B A * alpha / r); rlx's A [in, r] and B [r, out] are their transposes.
  """
  from safetensors.numpy import save_file
  os.makedirs(path, exist_ok=True)
  tensors = {}
  for n in spec.targets:
    a = np.asarray(jax.device_get(adapters[n]["a"]), np.float32)
    b = np.asarray(jax.device_get(adapters[n]["b"]), np.float32)
    L = a.shape[0]
    for i in range(L):
      pre = f"base_model.model.model.layers.{i}.{HF_MODULES[n]}"
      tensors[f"{pre}.lora_A.weight"] = np.ascontiguousarray(a[i].reshape(-1, spec.rank).T)
      tensors[f"{pre}.lora_B.weight"] = np.ascontiguousarray(b[i].reshape(spec.rank, -1).T)
  save_file(tensors, os.path.join(path, "adapter_model.safetensors"), metadata={"format": "pt"})
  conf = {"peft_type": "LORA", "task_type": "CAUSAL_LM", "r": spec.rank,
          "lora_alpha": spec.alpha, "lora_dropout": 0.0, "bias": "none",
          "target_modules": sorted(HF_MODULES[n].split(".")[-1] for n in spec.targets),
          "base_model_name_or_path": base_model_name_or_path, "fan_in_fan_out": False,
          "inference_mode": True, "init_lora_weights": True, "use_rslora": False,
          "use_dora": False, "modules_to_save": None}
  with open(os.path.join(path, "adapter_config.json"), "w") as f:
    json.dump(conf, f, indent=1)
  return path


def num_bytes(tree: Any) -> int:
  """Bytes of a tree's arrays (int4: half a byte each, as XLA stores them)."""
  return int(sum(np.prod(x.shape) * jax.dtypes.itemsize_bits(x.dtype) // 8
                 for x in jax.tree.leaves(tree)))
