"""ModelConfig: one frozen, hashable description of a Llama / Qwen2 / Qwen3 decoder.

Built from a Hugging Face `config.json` (dict) or a `transformers` config with
`ModelConfig.from_hf`, written back with `to_hf_dict`. Being a frozen dataclass
it can be a static jit argument.
"""
from __future__ import annotations

import dataclasses
import json
from typing import Any, Mapping

import jax.numpy as jnp

# Families and the HF architectures rlx loads and saves.
FAMILIES = ("llama", "qwen2", "qwen3")
_ARCH_PREFIX = {"llama": "Llama", "qwen2": "Qwen2", "qwen3": "Qwen3"}
CAUSAL_LM_ARCHITECTURES = tuple(f"{p}ForCausalLM" for p in _ARCH_PREFIX.values())
SEQ_CLS_ARCHITECTURES = tuple(f"{p}ForSequenceClassification" for p in _ARCH_PREFIX.values())
SUPPORTED_ARCHITECTURES = CAUSAL_LM_ARCHITECTURES + SEQ_CLS_ARCHITECTURES
SUPPORTED_ROPE_TYPES = ("default", "llama3")
_DTYPES = ("float32", "bfloat16", "float16")


def _dtype_name(dtype: Any) -> str:
  """Normalizes 'bf16' / jnp.bfloat16 / np.dtype / torch.bfloat16 to a name."""
  if dtype is None:
    return "float32"
  if isinstance(dtype, str):
    name = {"bf16": "bfloat16", "fp32": "float32", "f32": "float32", "fp16": "float16",
            "half": "float16", "float": "float32"}.get(dtype, dtype)
    name = name.removeprefix("torch.")
  elif str(dtype).startswith("torch."):
    name = str(dtype).removeprefix("torch.")
  else:
    name = jnp.dtype(dtype).name
  if name not in _DTYPES:
    raise ValueError(f"Unsupported dtype {dtype!r}. Valid choices: {', '.join(_DTYPES)}.")
  return name


def family_of_architecture(arch: str) -> str:
  for fam, prefix in _ARCH_PREFIX.items():
    if arch.startswith(prefix + "For"):
      return fam
  raise ValueError(f"Unsupported architecture {arch!r}. Supported architectures: "
                   f"{', '.join(SUPPORTED_ARCHITECTURES)}.")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Decoder hyper-parameters (HF names in comments where they differ).

  rope_scaling is None (plain RoPE) or a sorted tuple of (key, value) pairs of
  a Llama-3 scaling: factor, low_freq_factor, high_freq_factor,
  original_max_position_embeddings (see `rope_scaling_dict`).
  param_dtype / dtype (compute) are dtype names: 'float32' or 'bfloat16'.
  A config whose `architectures` is a *ForSequenceClassification has a score
  head [hidden, num_labels] instead of an LM head.
  """
  vocab_size: int
  hidden_size: int
  intermediate_size: int
  num_layers: int  # num_hidden_layers
  num_heads: int  # num_attention_heads
  num_kv_heads: int  # num_key_value_heads
  head_dim: int
  rope_theta: float = 10000.0
  rope_scaling: tuple[tuple[str, Any], ...] | None = None
  rms_norm_eps: float = 1e-6
  tie_word_embeddings: bool = False
  attention_bias: bool = False  # bias on q, k, v projections (always on in Qwen2)
  attention_out_bias: bool = False  # bias on o projection (HF attention_bias for Llama/Qwen3)
  qk_norm: bool = False  # RMSNorm on q and k per head (Qwen3)
  max_position_embeddings: int = 4096
  param_dtype: str = "float32"
  dtype: str = "float32"
  model_type: str = "llama"
  architectures: tuple[str, ...] = ()
  num_labels: int = 1
  pad_token_id: int | None = None
  bos_token_id: int | None = None
  eos_token_id: int | tuple[int, ...] | None = None
  remat: bool = False  # rematerialize each layer in the backward pass (not an HF field)
  # Attention core (not HF fields): a name in rlx.models.attention.ATTENTION or
  # "auto", and the query/key block sizes of blockwise/splash (capped at T/S).
  attention: str = "auto"
  attention_block_q: int = 512
  attention_block_kv: int = 512
  # The platform the model is lowered for (jax.export name: cpu, cuda, tpu)
  # when it is not the running backend (export, plans); None: the running one.
  attention_platform: str | None = None
  # Where activations live (rlx.models.sharding.ModelMesh: the device mesh and
  # the mesh axes of batch and heads), set by the trainer for a mesh of more
  # than one device; None: no activation constraints. Not serialized.
  mesh: Any = None

  def __post_init__(self):
    set_ = lambda k, v: object.__setattr__(self, k, v)
    set_("param_dtype", _dtype_name(self.param_dtype))
    set_("dtype", _dtype_name(self.dtype))
    if self.model_type not in FAMILIES:
      raise ValueError(f"Unsupported model_type {self.model_type!r}. Valid choices: "
                       f"{', '.join(FAMILIES)}.")
    archs = tuple(self.architectures) or (f"{_ARCH_PREFIX[self.model_type]}ForCausalLM",)
    set_("architectures", archs)
    for a in archs:
      if a not in SUPPORTED_ARCHITECTURES:
        raise ValueError(f"Unsupported architecture {a!r}. Supported architectures: "
                         f"{', '.join(SUPPORTED_ARCHITECTURES)}.")
      if family_of_architecture(a) != self.model_type:
        raise ValueError(f"Architecture {a!r} does not match model_type {self.model_type!r}.")
    if isinstance(self.rope_scaling, Mapping):
      set_("rope_scaling", tuple(sorted(self.rope_scaling.items())))
    if isinstance(self.eos_token_id, list):
      set_("eos_token_id", tuple(self.eos_token_id))
    from rlx.models.attention import ATTENTION
    from rlx.registry import check_choice
    check_choice(self.attention, ("auto", *ATTENTION.names()), "attention", "ModelConfig")
    if self.num_heads % self.num_kv_heads:
      raise ValueError(f"num_heads ({self.num_heads}) must be a multiple of num_kv_heads "
                       f"({self.num_kv_heads}).")
    if self.head_dim % 2:
      raise ValueError(f"head_dim must be even for RoPE, got {self.head_dim}.")
    if self.num_labels < 1:
      raise ValueError(f"num_labels must be >= 1, got {self.num_labels}.")
    if self.rope_scaling is not None:
      missing = {"factor", "low_freq_factor", "high_freq_factor",
                 "original_max_position_embeddings"} - set(self.rope_scaling_dict)
      if missing:
        raise ValueError(f"Llama-3 rope_scaling lacks {sorted(missing)}: {self.rope_scaling}.")

  # ---------------------------------------------------------------- properties
  @property
  def is_reward_model(self) -> bool:
    """True for *ForSequenceClassification configs (score head, no LM head)."""
    return self.architectures[0].endswith("ForSequenceClassification")

  @property
  def rope_scaling_dict(self) -> dict[str, Any]:
    return dict(self.rope_scaling or ())

  @property
  def compute_dtype(self) -> jnp.dtype:
    return jnp.dtype(self.dtype)

  @property
  def params_dtype(self) -> jnp.dtype:
    return jnp.dtype(self.param_dtype)

  @property
  def eos_token_ids(self) -> tuple[int, ...]:
    """eos_token_id as a tuple (empty if unset)."""
    if self.eos_token_id is None:
      return ()
    if isinstance(self.eos_token_id, int):
      return (self.eos_token_id,)
    return tuple(self.eos_token_id)

  def replace(self, **kw) -> "ModelConfig":
    return dataclasses.replace(self, **kw)

  def as_reward_model(self, num_labels: int = 1) -> "ModelConfig":
    """The *ForSequenceClassification config of the same backbone."""
    arch = f"{_ARCH_PREFIX[self.model_type]}ForSequenceClassification"
    return self.replace(architectures=(arch,), num_labels=num_labels)

  def as_causal_lm(self) -> "ModelConfig":
    return self.replace(architectures=(f"{_ARCH_PREFIX[self.model_type]}ForCausalLM",))

  # ---------------------------------------------------------------- builders
  @classmethod
  def for_family(cls, family: str, **kw) -> "ModelConfig":
    """A config with the family's fixed choices (Qwen2 qkv bias, Qwen3 q/k norm).

    Example: `ModelConfig.for_family('qwen3', vocab_size=256, hidden_size=64,
    intermediate_size=128, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=16)`.
    """
    if family not in FAMILIES:
      raise ValueError(f"Unknown model family {family!r}. Valid choices: {', '.join(FAMILIES)}.")
    defaults = {"llama": dict(rope_theta=500000.0, rms_norm_eps=1e-5),
                "qwen2": dict(attention_bias=True, rope_theta=1000000.0),
                "qwen3": dict(qk_norm=True, rope_theta=1000000.0)}[family]
    return cls(**{**defaults, "model_type": family, **kw})

  @classmethod
  def from_hf(cls, hf: Any, *, dtype: Any = None, param_dtype: Any = None,
              **overrides) -> "ModelConfig":
    """From a HF config.json dict or a transformers PretrainedConfig.

    param_dtype None -> the checkpoint's dtype ('dtype' / 'torch_dtype' field,
    float32 if absent); dtype (compute) None -> param_dtype.
    """
    d = dict(hf) if isinstance(hf, Mapping) else hf.to_dict()
    model_type = d.get("model_type")
    archs = d.get("architectures") or []
    if model_type not in FAMILIES:
      raise ValueError(
          f"Unsupported model_type {model_type!r} (architectures {archs}). Supported "
          f"architectures: {', '.join(SUPPORTED_ARCHITECTURES)}.")
    for a in archs:
      if a not in SUPPORTED_ARCHITECTURES:
        raise ValueError(f"Unsupported architecture {a!r}. Supported architectures: "
                         f"{', '.join(SUPPORTED_ARCHITECTURES)}.")
    if d.get("hidden_act", "silu") != "silu":
      raise ValueError(f"Unsupported hidden_act {d['hidden_act']!r}; rlx supports 'silu'.")
    if d.get("mlp_bias", False):
      raise ValueError("mlp_bias=True is not supported.")
    if d.get("use_sliding_window", False):
      raise ValueError("use_sliding_window=True is not supported (full attention only).")

    # RoPE: transformers 5 'rope_parameters' or legacy 'rope_theta' + 'rope_scaling'.
    rp = d.get("rope_parameters") or {}
    if "full_attention" in rp and isinstance(rp["full_attention"], Mapping):
      rp = rp["full_attention"]
    legacy = d.get("rope_scaling") or {}
    scaling = dict(legacy or rp)
    rope_type = scaling.get("rope_type", scaling.get("type", "default"))
    theta = rp.get("rope_theta", d.get("rope_theta", 10000.0))
    if rope_type not in SUPPORTED_ROPE_TYPES:
      raise ValueError(f"Unsupported rope type {rope_type!r}. Valid choices: "
                       f"{', '.join(SUPPORTED_ROPE_TYPES)}.")
    rope_scaling = None
    if rope_type == "llama3":
      rope_scaling = tuple(sorted(
          (k, float(scaling[k]) if k != "original_max_position_embeddings" else int(scaling[k]))
          for k in ("factor", "low_freq_factor", "high_freq_factor",
                    "original_max_position_embeddings")))

    heads = d["num_attention_heads"]
    hidden = d["hidden_size"]
    if model_type == "qwen2":
      qkv_bias, o_bias = True, False
    else:
      qkv_bias = o_bias = bool(d.get("attention_bias", False))
    is_seq_cls = bool(archs) and archs[0].endswith("ForSequenceClassification")
    if not is_seq_cls:
      num_labels = 1  # unused by causal LMs (transformers' default is 2)
    elif "num_labels" in d and d["num_labels"] is not None:
      num_labels = int(d["num_labels"])
    elif d.get("id2label"):
      num_labels = len(d["id2label"])
    else:
      num_labels = 2  # transformers' default
    ckpt_dtype = d.get("dtype") or d.get("torch_dtype") or "float32"
    param_dtype = _dtype_name(param_dtype if param_dtype is not None else ckpt_dtype)
    kw = dict(
        vocab_size=d["vocab_size"],
        hidden_size=hidden,
        intermediate_size=d["intermediate_size"],
        num_layers=d["num_hidden_layers"],
        num_heads=heads,
        num_kv_heads=d.get("num_key_value_heads") or heads,
        head_dim=d.get("head_dim") or hidden // heads,
        rope_theta=float(theta),
        rope_scaling=rope_scaling,
        rms_norm_eps=float(d.get("rms_norm_eps", 1e-6)),
        tie_word_embeddings=bool(d.get("tie_word_embeddings", False)),
        attention_bias=qkv_bias,
        attention_out_bias=o_bias,
        qk_norm=model_type == "qwen3",
        max_position_embeddings=d.get("max_position_embeddings", 4096),
        param_dtype=param_dtype,
        dtype=_dtype_name(dtype) if dtype is not None else param_dtype,
        model_type=model_type,
        architectures=tuple(archs),
        num_labels=num_labels,
        pad_token_id=d.get("pad_token_id"),
        bos_token_id=d.get("bos_token_id"),
        eos_token_id=d.get("eos_token_id"),
    )
    kw.update(overrides)
    return cls(**kw)

  def to_hf_dict(self) -> dict[str, Any]:
    """A config.json dict that transformers (5.x, and 4.x legacy keys) loads."""
    fam = self.model_type
    if fam == "qwen2" and (not self.attention_bias or self.attention_out_bias):
      raise ValueError("Qwen2 in transformers has q/k/v bias and no o bias; this config has "
                       f"attention_bias={self.attention_bias}, "
                       f"attention_out_bias={self.attention_out_bias}.")
    if fam != "qwen2" and self.attention_bias != self.attention_out_bias:
      raise ValueError(f"{fam} in transformers has one attention_bias flag for q/k/v/o; this "
                       f"config has attention_bias={self.attention_bias}, "
                       f"attention_out_bias={self.attention_out_bias}.")
    if self.qk_norm != (fam == "qwen3"):
      raise ValueError(f"qk_norm={self.qk_norm} is not expressible as a {fam} HF config "
                       "(q/k norm exists in qwen3 only).")
    rope_params = {"rope_type": "default", "rope_theta": self.rope_theta}
    legacy_scaling = None
    if self.rope_scaling is not None:
      legacy_scaling = {"rope_type": "llama3", **self.rope_scaling_dict}
      rope_params = {**legacy_scaling, "rope_theta": self.rope_theta}
    d: dict[str, Any] = {
        "architectures": list(self.architectures),
        "model_type": fam,
        "vocab_size": self.vocab_size,
        "hidden_size": self.hidden_size,
        "intermediate_size": self.intermediate_size,
        "num_hidden_layers": self.num_layers,
        "num_attention_heads": self.num_heads,
        "num_key_value_heads": self.num_kv_heads,
        "head_dim": self.head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": self.max_position_embeddings,
        "rms_norm_eps": self.rms_norm_eps,
        "rope_theta": self.rope_theta,
        "rope_scaling": legacy_scaling,
        "rope_parameters": rope_params,
        "tie_word_embeddings": self.tie_word_embeddings,
        "pad_token_id": self.pad_token_id,
        "bos_token_id": self.bos_token_id,
        "eos_token_id": (list(self.eos_token_id) if isinstance(self.eos_token_id, tuple)
                         else self.eos_token_id),
        "dtype": self.param_dtype,
        "use_cache": True,
    }
    if fam != "qwen2":
      d["attention_bias"] = self.attention_bias
      d["mlp_bias"] = False
    if fam in ("qwen2", "qwen3"):
      d["use_sliding_window"] = False
    if self.is_reward_model:
      d["num_labels"] = self.num_labels
      d["id2label"] = {str(i): f"LABEL_{i}" for i in range(self.num_labels)}
      d["label2id"] = {f"LABEL_{i}": i for i in range(self.num_labels)}
    return d

  def to_json(self) -> str:
    """The fields as JSON, without the runtime `mesh` (devices are not config)."""
    return json.dumps({f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                       if f.name != "mesh"})
