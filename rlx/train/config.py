"""Config helpers: `:ARG` strings, validation against configs/base.py."""
from __future__ import annotations

import ast
import importlib.util
import os
import sys
from typing import Any

import ml_collections as mlc

from rlx.registry import check_choice

# Keys whose values are free-form dicts, checked by the function they configure.
FREE_FORM = ("advantage.options", "advantage.transforms", "advantage.columns", "advantage.inputs",
             "filter.options", "loss.terms", "rewards", "data.fields", "data.task_options",
             "model.arch", "mesh.axes", "mesh.dcn_axes")


def parse_arg(arg: str | None, defaults: dict[str, Any]) -> dict[str, Any]:
  """Parses `k=v,k2=v2` against `defaults` (types follow the defaults).

  An unknown key raises a ValueError listing the valid keys.
  """
  out = dict(defaults)
  if not arg:
    return out
  for part in arg.split(","):
    if not part.strip():
      continue
    if "=" not in part:
      raise ValueError(f"Config argument {part!r} is not key=value. Valid keys: "
                       f"{', '.join(sorted(defaults))}.")
    k, v = (s.strip() for s in part.split("=", 1))
    if k not in defaults:
      raise ValueError(f"Unknown config argument {k!r}. Valid keys: "
                       f"{', '.join(sorted(defaults))}.")
    d = defaults[k]
    if isinstance(d, bool):
      out[k] = v.lower() in ("1", "true", "yes")
    elif isinstance(d, int):
      out[k] = int(v)
    elif isinstance(d, float):
      out[k] = float(v)
    else:
      out[k] = v
  return out


CONFIGS_DIR = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", "configs"))


def load_config(path: str, arg: str | None = None) -> mlc.ConfigDict:
  """`get_config(arg)` of a config file (relative paths are under configs/)."""
  if not os.path.isabs(path) and not os.path.exists(path):
    path = os.path.join(CONFIGS_DIR, path)
  if not os.path.exists(path):
    raise FileNotFoundError(f"Config file {path!r} not found.")
  spec = importlib.util.spec_from_file_location(
      "rlx_config_" + os.path.basename(path)[:-3], path)
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod.get_config(arg)


def base_config() -> mlc.ConfigDict:
  """A fresh copy of configs/base.py's defaults (other configs start here)."""
  path = os.path.join(os.path.dirname(__file__), "..", "..", "configs", "base.py")
  spec = importlib.util.spec_from_file_location("rlx_configs_base", path)
  if spec is None or not os.path.exists(path):
    raise FileNotFoundError(f"configs/base.py not found at {path}: install rlx "
                            "from a checkout (pip install -e .).")
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod.get_config()


def _flatten(d: Any, prefix: str = "") -> dict[str, Any]:
  out = {}
  items = d.items() if hasattr(d, "items") else []
  for k, v in items:
    key = f"{prefix}{k}"
    if key in FREE_FORM:
      out[key] = v
    elif isinstance(v, (mlc.ConfigDict, dict)):
      out.update(_flatten(v, key + "."))
    else:
      out[key] = v
  return out


def validate(cfg: mlc.ConfigDict) -> None:
  """Fails before any compute on unknown keys and inconsistent settings."""
  base = _flatten(base_config())
  got = _flatten(cfg)
  unknown = sorted(set(got) - set(base))
  if unknown:
    k = unknown[0]
    section = k.rsplit(".", 1)[0] if "." in k else ""
    valid = sorted(b for b in base if (b.rsplit(".", 1)[0] if "." in b else "") == section)
    raise ValueError(f"Unknown config key {k!r}. Valid keys in "
                     f"{section or 'the top level'}: {', '.join(valid)}.")
  check_choice(cfg.trainer, ("rl", "sft", "reward_model"), "trainer", "config")
  for key, steps in (("train.steps", cfg.train.steps), ("sft.steps", cfg.sft.steps)):
    if steps < 0:
      raise ValueError(f"config.{key} must be >= 0, got {steps}.")
  if cfg.train.batch_prompts < 1:
    raise ValueError(f"config.train.batch_prompts must be >= 1, got {cfg.train.batch_prompts}.")
  if cfg.sampling.group_size < 1:
    raise ValueError(f"config.sampling.group_size must be >= 1, got {cfg.sampling.group_size}.")
  n = cfg.train.batch_prompts * cfg.sampling.group_size
  if not 0 <= cfg.sampling.tail_rows < n:
    raise ValueError(f"config.sampling.tail_rows={cfg.sampling.tail_rows} must be 0 (off) or "
                     f"in 1..{n - 1} (fewer than the {n} completions per step).")
  if cfg.train.minibatches < 1 or n % cfg.train.minibatches:
    raise ValueError(
        f"config.train.minibatches={cfg.train.minibatches} must divide the "
        f"{n} completions per step (batch_prompts {cfg.train.batch_prompts} x "
        f"group_size {cfg.sampling.group_size}).")
  check_choice(cfg.loss.old_logprobs, ("auto", "recompute", "sampler"), "loss.old_logprobs",
               "config")
  check_choice(cfg.model.init, ("checkpoint", "random", "sft"), "model.init", "config")
  if cfg.model.init == "checkpoint" and not cfg.model.checkpoint:
    raise ValueError("config.model.init='checkpoint' needs config.model.checkpoint "
                     "(a local Hugging Face directory).")
  hf_dirs = {"model.checkpoint": cfg.model.checkpoint if cfg.model.init == "checkpoint" else "",
             "ref.checkpoint": cfg.ref.checkpoint if cfg.ref.source == "checkpoint" else ""}
  for key, path in hf_dirs.items():
    if path and "://" not in path and not os.path.isfile(os.path.join(path, "config.json")):
      where = "in it" if os.path.isdir(path) else "there: no such directory"
      raise ValueError(f"config.{key}={path!r} is not a local Hugging Face directory "
                       f"(no config.json {where}).")
  if cfg.data.task == "file" and cfg.data.path and "://" not in cfg.data.path and not (
      os.path.exists(cfg.data.path)):
    raise ValueError(f"config.data.path={cfg.data.path!r} does not exist.")
  rm = cfg.mesh.reward_models
  if rm not in ("policy", "local", "replicated") and not (
      rm.startswith("last:") and rm[5:].isdigit() and int(rm[5:]) > 0):
    check_choice(rm, ("policy", "local", "last:N", "replicated"), "mesh.reward_models", "config")
  check_choice(cfg.model.remat, ("none", "full", "dots"), "model.remat", "config")
  from rlx.train.layout import length_buckets
  length_buckets(cfg.train.length_buckets, cfg.sampling.max_new_tokens, "train.length_buckets")
  length_buckets(cfg.train.prompt_buckets, cfg.data.max_prompt_len, "train.prompt_buckets")
  _check_attention(cfg)
  check_choice(cfg.ref.source, ("initial", "checkpoint", "none"), "ref.source", "config")
  check_lora(cfg)
  if cfg.ref.source == "checkpoint" and not cfg.ref.checkpoint:
    raise ValueError("config.ref.source='checkpoint' needs config.ref.checkpoint.")
  check_choice(cfg.reward_errors, ("missing", "fatal"), "reward_errors", "config")
  if cfg.trainer == "rl" and not cfg.rewards:
    raise ValueError("config.rewards is empty: name at least one reward function.")
  for name, r in cfg.rewards.items():
    extra = set(r.keys()) - {"fn", "weight", "kwargs"}
    if extra or "fn" not in r:
      raise ValueError(f"config.rewards.{name} must have keys fn, weight[, kwargs]; "
                       f"got {sorted(r.keys())}.")


def _check_attention(cfg: mlc.ConfigDict) -> None:
  """model.attention is a registered implementation (or auto); model.attention_blocks
  is 'N' or 'NQ,NKV' (blockwise cuts a longer length into the fewest blocks of at
  most that size: `rlx.models.decoder.blockwise_block`)."""
  from rlx.models.attention import ATTENTION
  from rlx.train.common import attention_blocks
  check_choice(cfg.model.attention, ("auto", *ATTENTION.names()), "model.attention", "config")
  attention_blocks(cfg)


def lora_model_config(cfg: mlc.ConfigDict):
  """The policy's ModelConfig as far as LoRA needs it (no weights, no tokenizer)."""
  import json
  from rlx.models.config import ModelConfig
  if cfg.model.init == "checkpoint":
    with open(os.path.join(cfg.model.checkpoint, "config.json")) as f:
      return ModelConfig.from_hf(json.load(f))
  arch = dict(cfg.model.arch)
  arch.setdefault("head_dim", arch["hidden_size"] // arch["num_attention_heads"])
  return ModelConfig.from_hf(dict(arch, vocab_size=arch.get("vocab_size", 256),
                                  architectures=["Qwen2ForCausalLM"]))


def check_lora(cfg: mlc.ConfigDict) -> None:
  """config.model.lora against the trainer and the policy's shapes."""
  lo = cfg.model.lora
  if lo.rank < 0:
    raise ValueError(f"config.model.lora.rank must be >= 0 (0: off), got {lo.rank}.")
  if not lo.rank:
    return
  if cfg.trainer == "reward_model":
    raise ValueError("config.model.lora.rank > 0 with trainer='reward_model' (a reward-model "
                     "head): LoRA trains causal-LM policies; valid: trainer 'rl' or rank=0.")
  if cfg.trainer != "rl":
    check_choice(cfg.trainer, ("rl",), "trainer (with model.lora.rank > 0)", "config")
  if cfg.ref.source == "checkpoint" or cfg.ref.sync_every:
    raise ValueError("config.model.lora.rank > 0 takes the reference from the base weights "
                     "(adapters off); valid: ref.source 'initial' or 'none', ref.sync_every=0.")
  from rlx.models import lora
  lora.make_spec(lora_model_config(cfg), lo.rank, lo.alpha, lo.targets, lo.quantize, lo.dropout)


def task_rewards(task: str, weights: dict[str, float] | None = None) -> mlc.ConfigDict:
  """config.rewards for a built-in task: short name -> {fn, weight, kwargs}.

  `weights` overrides the task's default weights by short name; a weight of 0
  drops the reward.
  """
  from rlx.data import TASKS
  defaults = TASKS.get(task).default_rewards
  out = mlc.ConfigDict()
  for fn, w in defaults.items():
    short = fn.split("/", 1)[-1]
    w = (weights or {}).get(short, w)
    if w:
      out[short] = mlc.ConfigDict({"fn": fn, "weight": float(w), "kwargs": {}})
  return out


def check_names(cfg: mlc.ConfigDict) -> None:
  """Checks every registry name and option dict in the config (no compute).

  Raises KeyError/ValueError/TypeError naming the key and the valid choices.
  """
  import rlx.data  # noqa: F401  (registers the built-in tasks' rewards)
  import rlx.rewards  # noqa: F401
  from rlx import advantages, losses
  from rlx.data import TASKS
  from rlx.rewards.registry import REWARD_FNS
  from rlx.train.optim import OPTIMIZERS, SCHEDULES

  def wrap(key, fn):
    try:
      return fn()
    except (KeyError, ValueError, TypeError) as e:
      msg = e.args[0] if e.args else str(e)
      raise type(e)(f"config.{key}: {msg}") from None

  if cfg.trainer == "reward_model":
    from rlx.train.reward_model import LAYOUTS, SYNTHETIC_TASKS, rm_settings
    loss = wrap("rm", lambda: rm_settings(cfg))["loss"]
    valid = ("file",) + SYNTHETIC_TASKS[LAYOUTS[loss]]
    if cfg.data.task not in valid:
      raise ValueError(f"config.data.task={cfg.data.task!r} for reward-model training with "
                       f"rm.loss={loss!r}; valid: {', '.join(valid)}.")
    if cfg.data.task == "file" and not cfg.data.path:
      raise ValueError("config.data.task='file' needs config.data.path.")
  elif cfg.data.task != "file":
    wrap("data.task", lambda: TASKS.get(cfg.data.task))
    wrap("data.task_options", lambda: TASKS.check_options(cfg.data.task,
                                                          dict(cfg.data.task_options)))
  elif not cfg.data.path:
    raise ValueError("config.data.task='file' needs config.data.path.")
  for name, r in cfg.rewards.items():
    fn = r["fn"] if callable(r["fn"]) else wrap(f"rewards.{name}.fn",
                                                 lambda: REWARD_FNS.get(r["fn"]))
    label = getattr(fn, "__name__", repr(fn)) if callable(r["fn"]) else r["fn"]
    wrap(f"rewards.{name}.kwargs", lambda: REWARD_FNS.check_options(
        label, dict(r.get("kwargs", None) or {}), fn=fn))
  wrap("optim.name", lambda: OPTIMIZERS.get(cfg.optim.name))
  wrap("optim.schedule", lambda: SCHEDULES.get(cfg.optim.schedule))
  if cfg.trainer == "rl":
    wrap("advantage.estimator", lambda: advantages.ESTIMATORS.get(cfg.advantage.estimator))
    wrap("advantage.options", lambda: advantages.ESTIMATORS.check_options(
        cfg.advantage.estimator, dict(cfg.advantage.options)))
    for i, spec in enumerate(cfg.advantage.transforms):
      wrap(f"advantage.transforms[{i}]", lambda: _check_transform(spec))
    from rlx.train import structured
    both = sorted(set(cfg.advantage.inputs) & set(cfg.advantage.columns))
    if both:
      raise ValueError(f"config.advantage.inputs.{both[0]}: also set in "
                       f"config.advantage.columns; give each input one source.")
    for key, (fn, _) in structured.check_inputs(cfg.advantage.inputs).items():
      if fn is structured.reference_samples and cfg.ref.source == "none":
        raise ValueError(f"config.advantage.inputs.{key}: reference_samples samples the "
                         "reference policy, but config.ref.source is 'none'.")
    if cfg.filter.name != "none":
      wrap("filter.name", lambda: advantages.FILTERS.get(cfg.filter.name))
      wrap("filter.options", lambda: advantages.FILTERS.check_options(
          cfg.filter.name, dict(cfg.filter.options)))
    wrap("loss.terms", lambda: losses.check_terms(
        {k: dict(v) for k, v in cfg.loss.terms.items()}))
    if cfg.loss.correct_reward:
      check_choice(cfg.loss.correct_reward, tuple(cfg.rewards.keys()), "loss.correct_reward",
                   "config")


def _check_transform(spec: Any) -> None:
  from rlx.advantages import TRANSFORMS
  if not isinstance(spec, (dict, mlc.ConfigDict)) or "name" not in spec:
    raise ValueError(f"a transform is {{'name': NAME, **options}}, got {spec!r}. "
                     f"Valid names: {', '.join(TRANSFORMS.names())}.")
  spec = dict(spec)
  TRANSFORMS.check_options(spec.pop("name"), spec)


def _placeholder_shape(key: str, n: int, g: int, k: int) -> tuple[int, ...]:
  """Shape of a column input named with its shape suffix (N rows, G groups, K rewards)."""
  suffix = key.rsplit("_", 1)[-1] if "_" in key else "N"
  dims = {"N": n, "G": n, "K": k}   # per-group keys arrive one row per completion
  return tuple(dims.get(c, 1) for c in suffix) if suffix.isupper() else (n,)


def check_traced(cfg: mlc.ConfigDict) -> None:
  """Traces the estimator and the filter (no compute) on the RL trainer's input
  shapes, so that an option an estimator checks when traced (a choice such as
  gdpo's `missing`) fails at start-up. Call after the multi-host start-up."""
  import jax
  import jax.numpy as jnp
  from rlx import advantages
  from rlx.train import structured
  g, r, k = cfg.train.batch_prompts, cfg.sampling.group_size, len(cfg.rewards)
  c = cfg.sampling.max_new_tokens

  def trace(rewards_NK):
    columns = {key: jnp.zeros(_placeholder_shape(key, g * r, g, k),
                              jnp.int32 if key in advantages.COLUMN_FIELDS else jnp.float32)
               for key in cfg.advantage.columns}
    columns.update(structured.placeholders(cfg.advantage.inputs, structured.Sizes(g * r, r, c, k)))
    fields, extras = advantages.column_inputs(columns, r)
    x = advantages.AdvantageInputs(
        rewards_NK=rewards_NK, group_ids_N=jnp.repeat(jnp.arange(g, dtype=jnp.int32), r),
        valid_N=jnp.ones((g * r,), bool), weights_K=jnp.ones((k,), jnp.float32),
        lengths_N=jnp.zeros((g * r,), jnp.float32), reward_names=tuple(cfg.rewards.keys()),
        extras=extras, **fields)
    x = advantages.apply_transforms(x, [dict(t) for t in cfg.advantage.transforms])
    adv, _ = advantages.compute_advantages(cfg.advantage.estimator, x, g,
                                           **dict(cfg.advantage.options))
    if adv.shape not in ((g * r,), (g * r, c)):
      hint = (" (mapo: set config.advantage.inputs.turn_ids_NT to a producer (turn_ids) to "
              "place per-turn advantages on tokens)" if x.turn_ids_NT is None else "")
      raise ValueError(f"{cfg.advantage.estimator} gives advantages of shape {adv.shape}; the "
                       f"loss takes [N]={g * r} or [N, C]=({g * r}, {c}){hint}.")
    if cfg.filter.name != "none":
      advantages.apply_filter(cfg.filter.name, x, g, **dict(cfg.filter.options))

  try:
    jax.eval_shape(trace, jax.ShapeDtypeStruct((g * r, k), jnp.float32))
  except (KeyError, ValueError, TypeError) as e:
    key = "filter.options" if cfg.filter.name != "none" and cfg.filter.name in str(e) else (
        "advantage.options")
    raise type(e)(f"config.{key}: {e.args[0] if e.args else e}") from None


def parse_flags(argv: list[str], usage: str) -> list[str]:
  """absl flag parsing where a bad config override or config argument (an unknown
  key, a wrong type, an unknown task) is a one-line message and exit status 2."""
  from absl import flags
  try:
    return flags.FLAGS(argv)
  except (flags.Error, AttributeError, KeyError, ValueError, TypeError) as e:
    msg = str(e.args[0] if e.args else e)
    if "Traceback (most recent call last)" in msg:  # an error inside get_config(arg)
      msg = [line for line in msg.splitlines() if line.strip()][-1]
    if isinstance(e, (AttributeError, KeyError)):  # repr-quoted by ml_collections / KeyError
      try:
        msg = str(ast.literal_eval(msg))
      except (ValueError, SyntaxError):
        pass
    if isinstance(e, AttributeError):  # an override of a key the config does not have
      first, *rest = msg.splitlines() or [""]
      msg = " ".join([f"unknown config key {first}.", *rest,
                      "(Overrides set existing keys; set an options dict whole, e.g. "
                      "--config.advantage.options=\"{'eps': 1e-4}\".)"])
    print(f"rlx: config error: {msg.strip()}", file=sys.stderr)
    print(f"Usage: {usage}", file=sys.stderr)
    sys.exit(2)
