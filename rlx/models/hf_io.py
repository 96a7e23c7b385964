"""Load and save Hugging Face checkpoint directories (config.json + safetensors).

Loading reads one tensor at a time with `safetensors.safe_open`, converts it to
the rlx layout and param dtype, writes it into the stacked [L, ...] buffer of
its parameter, and puts each finished parameter on device before starting the
next, so host memory never holds two full copies of the model. Saving writes
shard by shard (model.safetensors, or model-0000i-of-0000n.safetensors plus
model.safetensors.index.json above `max_shard_bytes`) in the layout
`transformers.AutoModelForCausalLM` / `...ForSequenceClassification` loads.
"""
from __future__ import annotations

import json
import os
from contextlib import ExitStack
from pathlib import Path
from typing import Any, Callable, Iterator

import jax
import numpy as np
from flax import nnx

from rlx.models.config import SUPPORTED_ARCHITECTURES, ModelConfig
from rlx.models.decoder import abstract_model, param_specs

DEFAULT_MAX_SHARD_BYTES = 5 * 1024**3

# rlx layer param -> HF name under model.layers.{i}.
_LAYER_NAMES = {
    "attn_norm": "input_layernorm.weight",
    "q": "self_attn.q_proj.weight",
    "k": "self_attn.k_proj.weight",
    "v": "self_attn.v_proj.weight",
    "o": "self_attn.o_proj.weight",
    "q_bias": "self_attn.q_proj.bias",
    "k_bias": "self_attn.k_proj.bias",
    "v_bias": "self_attn.v_proj.bias",
    "o_bias": "self_attn.o_proj.bias",
    "q_norm": "self_attn.q_norm.weight",
    "k_norm": "self_attn.k_norm.weight",
    "mlp_norm": "post_attention_layernorm.weight",
    "gate": "mlp.gate_proj.weight",
    "up": "mlp.up_proj.weight",
    "down": "mlp.down_proj.weight",
}
_TOP_NAMES = {
    "embed": "model.embed_tokens.weight",
    "final_norm": "model.norm.weight",
    "lm_head": "lm_head.weight",
    "score": "score.weight",
}
# Params stored transposed ([out, in] in torch Linear -> [in, out] in rlx).
_TRANSPOSED = {"q", "k", "v", "o", "gate", "up", "down", "lm_head", "score"}


def _np_dtype(name: str) -> np.dtype:
  return np.dtype(jax.numpy.dtype(name))


def hf_to_rlx(name: str, x: np.ndarray, rlx_shape: tuple[int, ...]) -> np.ndarray:
  """One HF tensor -> rlx layout of param `name` (per-layer shape for layer params)."""
  if name in _TRANSPOSED:
    x = x.T
  return x.reshape(rlx_shape)


def rlx_to_hf(name: str, x: np.ndarray) -> np.ndarray:
  """One rlx param (per-layer slice for layer params) -> HF layout."""
  if name == "o":  # [H, D, E] -> [E, H*D]
    return x.reshape(-1, x.shape[-1]).T
  if name in _TRANSPOSED:  # [E, H, D] -> [H*D, E]; [E, M] -> [M, E]; [E, V] -> [V, E]
    return x.reshape(x.shape[0], -1).T
  if name.endswith("_bias"):  # [H, D] -> [H*D]
    return x.reshape(-1)
  return x  # embed [V, E], norm scales


def hf_tensor_names(cfg: ModelConfig) -> Iterator[tuple[str, str, int | None]]:
  """Yields (hf_name, rlx_name, layer or None) of every tensor a checkpoint holds."""
  specs = param_specs(cfg)
  for name in specs:
    if name == "layers":
      for lname in specs["layers"]:
        for i in range(cfg.num_layers):
          yield f"model.layers.{i}.{_LAYER_NAMES[lname]}", lname, i
    else:
      yield _TOP_NAMES[name], name, None


# ------------------------------------------------------------------------- load
def _read_config(path: Path) -> dict[str, Any]:
  if not path.is_dir():
    raise FileNotFoundError(f"Model directory {str(path)!r} does not exist.")
  cfg_file = path / "config.json"
  if not cfg_file.exists():
    raise FileNotFoundError(
        f"No config.json in {str(path)!r}: expected a Hugging Face model directory "
        "(config.json + model.safetensors or model.safetensors.index.json).")
  return json.loads(cfg_file.read_text())


def _weight_map(path: Path) -> dict[str, str]:
  """HF tensor name -> safetensors file name."""
  index = path / "model.safetensors.index.json"
  single = path / "model.safetensors"
  if index.exists():
    return dict(json.loads(index.read_text())["weight_map"])
  if single.exists():
    from safetensors import safe_open
    with safe_open(str(single), framework="numpy") as f:
      return {k: "model.safetensors" for k in f.keys()}
  others = sorted(p.name for p in path.iterdir() if p.suffix in (".bin", ".pt", ".safetensors"))
  raise FileNotFoundError(
      f"No model.safetensors or model.safetensors.index.json in {str(path)!r}"
      + (f" (found {others}; only safetensors checkpoints are supported)" if others else "")
      + ".")


def load_hf(path: str | os.PathLike, dtype: Any = None, param_dtype: Any = None,
            sharding_fn: Callable[[tuple], jax.sharding.Sharding] | None = None,
            architectures: tuple[str, ...] | None = None,
            ) -> tuple[ModelConfig, nnx.GraphDef, nnx.State]:
  """Loads a local HF checkpoint dir -> (cfg, graphdef, params).

  param_dtype None -> the checkpoint's dtype; dtype (compute) None -> param_dtype.
  sharding_fn(logical_axes) -> Sharding places each parameter (e.g.
  NamedSharding(mesh, rules(axes))); default: the default device.
  architectures restricts which HF architectures are accepted (default: all
  supported ones).
  """
  from safetensors import safe_open

  path = Path(path)
  hf_cfg = _read_config(path)
  archs = hf_cfg.get("architectures") or []
  allowed = tuple(architectures or SUPPORTED_ARCHITECTURES)
  if archs and archs[0] not in SUPPORTED_ARCHITECTURES:
    raise ValueError(f"Unsupported architectures {archs} in {str(path / 'config.json')!r}. "
                     f"Supported architectures: {', '.join(SUPPORTED_ARCHITECTURES)}.")
  cfg = ModelConfig.from_hf(hf_cfg, dtype=dtype, param_dtype=param_dtype)
  if cfg.architectures[0] not in allowed:
    raise ValueError(f"Architecture {cfg.architectures[0]!r} of {str(path)!r} is not accepted "
                     f"here. Valid choices: {', '.join(allowed)}.")
  wmap = _weight_map(path)
  graphdef, abstract = abstract_model(cfg)
  pdt = _np_dtype(cfg.param_dtype)

  def stored_name(hf_name: str) -> str | None:
    if hf_name in wmap:
      return hf_name
    bare = hf_name.removeprefix("model.")  # a bare base-model checkpoint
    return bare if bare in wmap and not cfg.is_reward_model else None

  by_param: dict[tuple[str, ...], list[tuple[str, int | None]]] = {}
  for hf_name, rname, layer in hf_tensor_names(cfg):
    key = ("layers", rname) if layer is not None else (rname,)
    by_param.setdefault(key, []).append((hf_name, layer))

  pure: dict[str, Any] = {"layers": {}}
  with ExitStack() as stack:
    handles: dict[str, Any] = {}

    def handle(fname: str):
      if fname not in handles:
        handles[fname] = stack.enter_context(safe_open(str(path / fname), framework="numpy"))
      return handles[fname]

    for key, tensors in by_param.items():
      var = abstract[key[0]] if len(key) == 1 else abstract[key[0]][key[1]]
      shape, axes = tuple(var.get_value().shape), tuple(var.get_metadata("out_sharding"))
      target = shape[1:] if key[0] == "layers" else shape
      buf = np.empty(shape, pdt)
      for hf_name, layer in tensors:
        name = stored_name(hf_name)
        if name is None:
          raise KeyError(f"Tensor {hf_name!r} is missing from the checkpoint in {str(path)!r} "
                         f"(needed for rlx param {'/'.join(key)}).")
        f = handle(wmap[name])
        hf_shape = tuple(f.get_slice(name).get_shape())
        expected = _expected_hf_shape(key[-1], target)
        if hf_shape != expected:
          raise ValueError(f"Tensor {hf_name!r} has shape {list(hf_shape)}, expected "
                           f"{list(expected)} from config.json in {str(path)!r}.")
        x = hf_to_rlx(key[-1], f.get_tensor(name), target).astype(pdt, copy=False)
        if layer is None:
          buf[...] = x
        else:
          buf[layer] = x
        del x
      arr = _to_device(buf, axes, sharding_fn)
      del buf
      if key[0] == "layers":
        pure["layers"][key[1]] = arr
      else:
        pure[key[0]] = arr

  nnx.replace_by_pure_dict(abstract, pure)
  return cfg, graphdef, abstract


def _expected_hf_shape(name: str, target: tuple[int, ...]) -> tuple[int, ...]:
  if name == "o":
    return (target[-1], int(np.prod(target[:-1])))
  if name in _TRANSPOSED:
    return (int(np.prod(target[1:])), target[0])
  if name.endswith("_bias"):
    return (int(np.prod(target)),)
  return tuple(target)  # embed, norm scales


def _to_device(buf: np.ndarray, axes: tuple, sharding_fn) -> jax.Array:
  if sharding_fn is None:
    return jax.device_put(buf)
  sharding = sharding_fn(axes)
  return jax.make_array_from_callback(buf.shape, sharding, lambda idx: buf[idx])


_PROBE = "Tools: f(x:int)\nUser: What is 12+345?\tCall:\n<call>{\"a\": 1}</call> Ünï"


def _faithful_tokenizer(tok, path: Path):
  """The directory's own tokenizer.json when AutoTokenizer encodes differently.

  transformers 5 picks the tokenizer class from config.json's model_type; for
  qwen2 that class rebuilds the pre-tokenizer, which breaks non-Qwen
  vocabularies (e.g. rlx's character tokenizer loses spaces and newlines).
  The saved tokenizer.json is what the model was trained with.
  """
  f = path / "tokenizer.json"
  if not f.exists():
    return tok
  from tokenizers import Tokenizer
  from transformers import PreTrainedTokenizerFast
  raw = Tokenizer.from_file(str(f))
  if tok(_PROBE, add_special_tokens=False)["input_ids"] == raw.encode(_PROBE, add_special_tokens=False).ids:
    return tok
  cfg_file = path / "tokenizer_config.json"
  kw = json.loads(cfg_file.read_text()) if cfg_file.exists() else {}
  special = {k: kw[k] for k in ("bos_token", "eos_token", "pad_token", "unk_token")
             if isinstance(kw.get(k), str)}
  fast = PreTrainedTokenizerFast(tokenizer_file=str(f), **special)
  fast.padding_side = kw.get("padding_side", "left")
  if getattr(tok, "chat_template", None):
    fast.chat_template = tok.chat_template
  return fast


def load_tokenizer(path: str | os.PathLike, cfg: ModelConfig | None = None):
  """AutoTokenizer from a local dir; checks len(tokenizer) <= model vocab_size.

  The model vocab comes from cfg, else from config.json in the same dir if any.
  """
  from transformers import AutoTokenizer

  path = Path(path)
  tok = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
  tok = _faithful_tokenizer(tok, path)
  vocab = cfg.vocab_size if cfg is not None else None
  if vocab is None and (path / "config.json").exists():
    vocab = json.loads((path / "config.json").read_text()).get("vocab_size")
  if vocab is not None and len(tok) > vocab:
    raise ValueError(f"Tokenizer in {str(path)!r} has {len(tok)} tokens but the model's "
                     f"vocab_size is {vocab}: token ids >= {vocab} would index past the "
                     "embedding table.")
  return tok


# ------------------------------------------------------------------------- save
def save_hf(path: str | os.PathLike, cfg: ModelConfig, params: nnx.State, tokenizer: Any = None,
            max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES, save_dtype: Any = None) -> str:
  """Writes cfg + params as a HF checkpoint dir that transformers loads; returns str(path).

  Tied models omit lm_head.weight; reward models write score.weight.
  save_dtype (default cfg.param_dtype) is the stored dtype. Above
  max_shard_bytes the weights are sharded with model.safetensors.index.json.
  """
  from safetensors.numpy import save_file

  path = Path(path)
  path.mkdir(parents=True, exist_ok=True)
  sdt_name = jax.numpy.dtype(save_dtype or cfg.param_dtype).name
  sdt = _np_dtype(sdt_name)
  hf_cfg = cfg.to_hf_dict()
  hf_cfg["dtype"] = sdt_name
  plan = []  # (hf_name, rlx_name, layer, nbytes)
  for hf_name, rname, layer in hf_tensor_names(cfg):
    var = params["layers"][rname] if layer is not None else params[rname]
    shape = var.get_value().shape[1:] if layer is not None else var.get_value().shape
    plan.append((hf_name, rname, layer, int(np.prod(shape)) * sdt.itemsize))
  shards: list[list] = [[]]
  size = 0
  for item in plan:
    if shards[-1] and size + item[3] > max_shard_bytes:
      shards.append([])
      size = 0
    shards[-1].append(item)
    size += item[3]
  n = len(shards)
  names = (["model.safetensors"] if n == 1 else
           [f"model-{i + 1:05d}-of-{n:05d}.safetensors" for i in range(n)])
  # Remove stale weight files of a previous save into the same dir.
  for p in list(path.glob("model*.safetensors")) + [path / "model.safetensors.index.json"]:
    if p.exists():
      p.unlink()
  weight_map = {}
  for fname, shard in zip(names, shards):
    tensors = {}
    for hf_name, rname, layer, _ in shard:
      var = params["layers"][rname] if layer is not None else params[rname]
      x = var[layer] if layer is not None else var[...]
      tensors[hf_name] = np.ascontiguousarray(rlx_to_hf(rname, np.asarray(x)).astype(sdt))
      weight_map[hf_name] = fname
    save_file(tensors, str(path / fname), metadata={"format": "pt"})
    del tensors
  if n > 1:
    index = {"metadata": {"total_size": sum(p[3] for p in plan)}, "weight_map": weight_map}
    (path / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
  (path / "config.json").write_text(json.dumps(hf_cfg, indent=2))
  gen = {"bos_token_id": cfg.bos_token_id, "eos_token_id": hf_cfg["eos_token_id"],
         "pad_token_id": cfg.pad_token_id}
  if not cfg.is_reward_model:
    (path / "generation_config.json").write_text(
        json.dumps({k: v for k, v in gen.items() if v is not None}, indent=2))
  if tokenizer is not None:
    tokenizer.save_pretrained(str(path))
  return str(path)
