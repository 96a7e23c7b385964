"""Memory plan of an RL run before launch: does it fit the accelerator?

    python -m rlx.plan --config=configs/FILE.py[:ARGS] [--config.KEY=VALUE ...]
        [--model=NAME|config.json|HF_DIR] [--devices=N] [--hbm_gb=16] [--platform=cpu|tpu|cuda]

Compiles the run's jitted steps (sample, eval sample, reference
and old log-probs, update) on abstract shapes (`rlx.train.abstract`: no
weights are allocated) for XLA:CPU, with N simulated CPU devices standing in
for the mesh, and prints per device: parameters, optimizer state, reference,
KV cache and each step's temporaries (`memory_analysis()` of the compiled
step), the peak (the persistent arrays plus the largest step) and whether it
fits `--hbm_gb` GiB. It is an XLA:CPU estimate: TPU/GPU compilers lay out,
fuse and rematerialize differently. With `--platform=tpu` (or cuda) it also
exports every step for that platform (jax.export, with the attention `auto`
picks there) and reports whether each lowers. With LoRA on
(config.model.lora.rank > 0) a second plan without LoRA is compiled for
comparison.

The model shape: `--model` (a built-in shape of rlx/models/shapes.py, a
config.json or a Hugging Face directory: only config.json is read); by default
config.model.checkpoint's config.json, or config.model.arch with the task's
tokenizer. Exit status: 0 fits (and lowers), 1 does not fit or does not lower
(one line names the part and the knobs that reduce it), 2 config error.
"""
from __future__ import annotations

import os
import sys


def _early_flag(name: str) -> str | None:
  """The value of --NAME=V / --NAME V in sys.argv (read before jax is imported)."""
  for i, a in enumerate(sys.argv):
    if a.startswith(f"--{name}="):
      return a.split("=", 1)[1]
    if a == f"--{name}" and i + 1 < len(sys.argv):
      return sys.argv[i + 1]
  return None


if __name__ == "__main__":  # simulated devices: before the first import of jax
  _n = _early_flag("devices")
  if _n and _n.isdigit():
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                               + f" --xla_force_host_platform_device_count={_n}")
  os.environ.setdefault("JAX_PLATFORMS", "cpu")

import copy  # noqa: E402
import dataclasses  # noqa: E402
import tempfile  # noqa: E402
from typing import Any  # noqa: E402

import jax  # noqa: E402

from rlx import models  # noqa: E402
from rlx.models import attention as attn  # noqa: E402
from rlx.models import shapes  # noqa: E402
from rlx.train import abstract, common  # noqa: E402
from rlx.train.abstract import bytes_per_device as _nbytes  # noqa: E402

GiB = 2 ** 30
PLATFORMS = ("cpu", "tpu", "cuda")
TRAINING_PASSES = ("ref_logprobs", "old_logprobs", "update")  # full-length forward passes


@dataclasses.dataclass
class StepMemory:
  name: str
  transient_args: int   # bytes of the step's arguments that are not persistent state
  outputs: int          # output bytes not aliased to (donated) inputs
  temp: int             # compiled temporaries (memory_analysis().temp_size_in_bytes)
  peak: int             # persistent state + transient args + outputs + temporaries
  attention: str        # the attention implementation the step's model calls run


@dataclasses.dataclass
class Plan:
  """Per-device bytes of a run (one device of the mesh)."""
  parts: dict[str, int]          # persistent arrays by part
  kv_cache: int                  # the train sampler's KV cache (inside `sample`'s temporaries)
  steps: list[StepMemory]
  devices: int
  mesh: str

  @property
  def persistent(self) -> int:
    return sum(self.parts.values())

  @property
  def peak_step(self) -> StepMemory:
    return max(self.steps, key=lambda s: s.peak)

  @property
  def peak(self) -> int:
    return self.peak_step.peak


def model_config(cfg, model: str | None = None, platform: str | None = None):
  """The ModelConfig of the run (no weights read): `model` (a built-in shape,
  config.json or HF directory), else config.model.checkpoint's config.json,
  else config.model.arch with the task's tokenizer."""
  if model:
    hf = shapes.load_hf_config(model)
  elif cfg.model.init == "checkpoint":
    if not cfg.model.checkpoint:
      raise ValueError("config.model.checkpoint is empty (config.model.init='checkpoint'); "
                       "give it, or a shape with --model (built-in: "
                       f"{', '.join(shapes.SHAPES)}).")
    hf = shapes.load_hf_config(cfg.model.checkpoint)
  else:
    with tempfile.TemporaryDirectory() as d:
      hf = common.hf_arch_dict(cfg, common.make_tokenizer(cfg, d))
  return models.ModelConfig.from_hf(hf, dtype=cfg.model.dtype, param_dtype=cfg.model.param_dtype,
                                    attention_platform=platform, **common.attention_options(cfg))


def _attention(mcfg, cfg, platform: str) -> str:
  """The attention implementation of the full-length passes on `platform` ('X (auto)')."""
  t = cfg.data.max_prompt_len + cfg.sampling.max_new_tokens
  name = attn.resolve(mcfg.attention, platform, dtype=mcfg.compute_dtype, T=t, S=t,
                      E=mcfg.head_dim, static_offset=True)
  return name if mcfg.attention == name else f"{name} (auto)"


def cpu_model(mcfg, cfg, platform: str):
  """The model the XLA:CPU estimate compiles: a kernel the CPU lacks (splash,
  cudnn) is replaced by blockwise (also O(T) memory); (cfg, note or '')."""
  if mcfg.attention in attn.PLATFORMS and "cpu" not in attn.PLATFORMS[mcfg.attention]:
    return (mcfg.replace(attention="blockwise", attention_platform=None),
            f"model.attention={mcfg.attention} runs on "
            f"{'/'.join(attn.PLATFORMS[mcfg.attention])}: the XLA:CPU estimate compiles "
            "blockwise in its place")
  cpu = mcfg.replace(attention_platform=None)
  there, here = _attention(mcfg, cfg, platform), _attention(cpu, cfg, "cpu")
  if platform != "cpu" and there != here:
    return cpu, (f"training passes run {there} on {platform}; the XLA:CPU estimate compiles "
                 f"{here}")
  return cpu, ""


def plan(cfg, mcfg, devices: Any = None) -> Plan:
  """Compiles the run's steps on abstract shapes; per-device bytes (XLA:CPU)."""
  run = abstract.abstract_run(cfg, mcfg, devices)
  parts = {k: _nbytes(v) for k, v in run.persistent().items()}
  persistent = sum(parts.values())
  att = _attention(mcfg, cfg, "cpu")
  out = []
  for step in run.steps:
    m = abstract.compile_step(step).memory_analysis()
    transient = sum(_nbytes(a) for a, keep in zip(step.args, step.persistent) if not keep)
    outputs = int(m.output_size_in_bytes - m.alias_size_in_bytes)
    temp = int(m.temp_size_in_bytes)
    out.append(StepMemory(step.name, transient, outputs, temp,
                          persistent + transient + outputs + temp,
                          att if step.name in TRAINING_PASSES else "-"))
  mesh = " ".join(f"{k}={v}" for k, v in run.place.mesh.shape.items())
  return Plan(parts, _nbytes(run.kv_cache), out, run.place.mesh.size, mesh)


def lowering(cfg, mcfg, platform: str, devices: Any = None) -> dict[str, str]:
  """{step: 'ok (attention)' or the error's first line}: each step exported for `platform`."""
  run = abstract.abstract_run(cfg, mcfg.replace(attention_platform=platform), devices)
  att = _attention(mcfg, cfg, platform)
  out = {}
  for step in run.steps:
    try:
      abstract.export_step(step, platform)
      out[step.name] = f"ok (attention {att})" if step.name in TRAINING_PASSES else "ok"
    except Exception as e:  # noqa: BLE001  (reported, not raised: that is the check)
      first = (str(e).strip().splitlines() or [type(e).__name__])[0]
      out[step.name] = f"FAILED: {type(e).__name__}: {first[:300]}"
  return out


# ---------------------------------------------------------------- report


def _gib(x: int) -> str:
  return f"{x / GiB:9.3f}"


_STEP_TEXT = {"sample": "sample (prefill + decode)", "eval_sample": "eval sample",
              "ref_logprobs": "reference log-probs",
              "old_logprobs": "old log-probs", "update": "update (forward, backward, optimizer)"}


def knobs(part: str, cfg, mcfg) -> list[str]:
  """Config settings that reduce `part` (a plan part or a step's temporaries)."""
  lengths = "sampling.max_new_tokens / data.max_prompt_len"
  batch = "train.batch_prompts / sampling.group_size"
  mesh = "mesh.axes (more fsdp/data devices split the batch)"
  shard = "mesh.axes fsdp (shards it over more devices)"
  out = []
  if part in ("parameters", "frozen base", "reference", "optimizer state"):
    out.append(shard)
    if part == "reference":
      out.append("model.lora.rank > 0 (the reference is the frozen base)")
      out.append("ref.source=none (no KL term)")
    elif not cfg.model.lora.rank:
      out.append("model.lora.rank > 0 (only adapters train: no full optimizer state)")
    if part in ("parameters", "frozen base"):
      if cfg.model.lora.rank and cfg.model.lora.quantize != "int4":
        out.append("model.lora.quantize=int4" if cfg.model.lora.quantize == "int8"
                   else "model.lora.quantize=int8 / int4")
      if cfg.model.param_dtype == "float32":
        out.append("model.param_dtype=bfloat16")
    return out
  if part in ("KV cache", "sample", "eval_sample"):
    return [batch if part != "eval_sample" else "eval.batch_prompts", lengths, mesh]
  if cfg.model.remat != "full":
    out.append("model.remat=full")
  if "dense" in _attention(mcfg, cfg, "cpu") or mcfg.attention == "dense":
    out.append("model.attention=blockwise")
  if part == "update":
    out.append("train.minibatches (fewer rows per update)")
  out += [batch, lengths, mesh]
  if cfg.model.logprob_chunk not in (0, 32):
    out.append("model.logprob_chunk (smaller vocab chunks)")
  return out


def overflow(p: Plan, hbm: int) -> tuple[str, int] | None:
  """(the largest part of the peak step, its bytes) when the plan exceeds `hbm` bytes."""
  if p.peak <= hbm:
    return None
  s = p.peak_step
  cands = dict(p.parts)
  if s.name in ("sample", "eval_sample"):
    cands["KV cache"] = p.kv_cache if s.name == "sample" else 0
    cands[s.name] = s.temp - cands["KV cache"]
  else:
    cands[s.name] = s.temp
  cands["step inputs/outputs"] = s.transient_args + s.outputs
  name = max(cands, key=cands.get)
  return name, cands[name]


def _part_label(name: str) -> str:
  return f"{_STEP_TEXT[name]} temporaries" if name in _STEP_TEXT else name


def report(p: Plan, cfg, mcfg, hbm_gb: float, note: str = "", title: str = "") -> list[str]:
  """The plan's lines; the last says whether it fits."""
  n = cfg.train.batch_prompts * cfg.sampling.group_size
  lines = [title or "rlx plan",
           f"  model {mcfg.model_type}: {num_params_of(mcfg) / 1e9:.3f}B params, "
           f"{mcfg.num_layers} layers, width {mcfg.hidden_size}, vocab {mcfg.vocab_size}, "
           f"params {mcfg.param_dtype}, compute {mcfg.dtype}, remat {cfg.model.remat}",
           f"  {p.devices} device(s), mesh {p.mesh}; N={n} completions "
           f"({cfg.train.batch_prompts} prompts x {cfg.sampling.group_size}), "
           f"P={cfg.data.max_prompt_len} prompt + C={cfg.sampling.max_new_tokens} completion "
           f"tokens, {cfg.train.minibatches} minibatch(es)",
           "  XLA:CPU estimate: the jitted steps compiled for CPU on abstract shapes (no weights "
           "allocated); TPU/GPU compilers lay out and fuse differently."]
  if note:
    lines.append(f"  note: {note}")
  lines.append(f"  per device{'':33s}GiB")
  lora = cfg.model.lora
  names = {"parameters": "parameters" + (f" (LoRA adapters, rank {lora.rank})" if lora.rank
                                         else ""),
           "frozen base": "frozen base" + (" (int8 targets + scales)"
                                           if lora.quantize == "int8" else ""),
           "optimizer state": "optimizer state", "reference": "reference",
           "step counters": "step counters"}
  for k, v in p.parts.items():
    if k != "step counters":
      lines.append(f"    {names[k]:40s}{_gib(v)}")
  if lora.rank and cfg.ref.source == "initial":
    lines.append(f"    {'reference (the frozen base, LoRA off)':40s}{_gib(0)}")
  elif "reference" not in p.parts:
    lines.append(f"    {'reference (ref.source=none)':40s}{_gib(0)}")
  lines.append(f"    {'KV cache (k + v; in sample temporaries)':40s}{_gib(p.kv_cache)}")
  lines.append("    temporaries and step inputs/outputs, by step:")
  for s in p.steps:
    att = f", attention {s.attention}" if s.attention != "-" else ""
    lines.append(f"      {_STEP_TEXT[s.name]:38s}{_gib(s.temp)}  + in/out "
                 f"{(s.transient_args + s.outputs) / GiB:.2f}{att}")
  s = p.peak_step
  lines.append(f"    {'peak = persistent + ' + s.name:40s}{_gib(p.peak)}")
  hbm = int(hbm_gb * GiB)
  over = overflow(p, hbm)
  if over is None:
    lines.append(f"fits: peak {p.peak / GiB:.2f} GiB of {hbm_gb:g} GiB per device "
                 f"({s.name} step; XLA:CPU estimate)")
  else:
    part, nbytes = over
    lines.append(f"does not fit: peak {p.peak / GiB:.2f} GiB > {hbm_gb:g} GiB per device at the "
                 f"{s.name} step; largest part: {_part_label(part)} {nbytes / GiB:.2f} GiB; "
                 f"reduce it with: {', '.join(knobs(part, cfg, mcfg))}")
  return lines


def num_params_of(mcfg) -> int:
  return models.num_params(models.abstract_model(mcfg)[1])


def run_plan(cfg, model: str | None, hbm_gb: float, platform: str, devices: Any = None
             ) -> tuple[list[str], bool]:
  """(report lines, ok): ok when the plan fits and, for tpu/cuda, every step lowers."""
  if platform not in PLATFORMS:
    raise ValueError(f"--platform={platform!r}; valid choices: {', '.join(PLATFORMS)}.")
  if hbm_gb <= 0:
    raise ValueError(f"--hbm_gb={hbm_gb:g} must be > 0.")
  mcfg = model_config(cfg, model, None if platform == "cpu" else platform)
  _attention(mcfg, cfg, platform)  # an implementation the platform lacks: a config error
  cpu, note = cpu_model(mcfg, cfg, platform)
  p = plan(cfg, cpu, devices)
  src = model or (cfg.model.checkpoint if cfg.model.init == "checkpoint" else "config.model.arch")
  lines = report(p, cfg, cpu, hbm_gb, note, title=f"rlx plan: model {src}")
  ok = overflow(p, int(hbm_gb * GiB)) is None
  if cfg.model.lora.rank:
    full = copy.deepcopy(cfg)
    full.model.lora.rank = 0
    q = plan(full, cpu, devices)
    lo = "QLoRA int8" if cfg.model.lora.quantize == "int8" else "LoRA"
    pers = lambda x: x.persistent
    lines.insert(-1, f"  without LoRA (model.lora.rank=0): parameters + optimizer + reference "
                     f"{pers(q) / GiB:.2f} GiB, peak {q.peak / GiB:.2f} GiB ({q.peak_step.name}); "
                     f"{lo} rank {cfg.model.lora.rank}: {pers(p) / GiB:.2f} GiB "
                     f"({pers(p) / max(pers(q), 1):.0%}), peak {p.peak / GiB:.2f} GiB "
                     f"({p.peak / max(q.peak, 1):.0%})")
  if platform != "cpu":
    low = lowering(cfg, mcfg, platform, devices)
    lines.insert(-1, f"  {platform} lowering (jax.export, platforms=['{platform}']):")
    for k, v in low.items():
      lines.insert(-1, f"    {_STEP_TEXT[k]:40s}{v}")
    failed = [k for k, v in low.items() if v.startswith("FAILED")]
    if failed:
      ok = False
      lines.append(f"does not lower for {platform}: {', '.join(failed)} (see above)")
  return lines, ok


def main(argv):
  del argv
  from rlx.train.config import check_names, validate
  cfg = _CONFIG.value
  try:
    validate(cfg)
    check_names(cfg)
    if cfg.trainer != "rl":
      raise ValueError(f"config.trainer={cfg.trainer!r}: rlx.plan plans RL runs; valid: rl.")
    if _DEVICES.value and jax.device_count() != _DEVICES.value:
      raise ValueError(f"--devices={_DEVICES.value} but jax sees {jax.device_count()} "
                       f"{jax.default_backend()} device(s); run rlx.plan as "
                       "`python -m rlx.plan` (it sets up the simulated devices).")
    lines, ok = run_plan(cfg, _MODEL.value, _HBM.value, _PLATFORM.value)
  except (KeyError, ValueError, TypeError) as e:
    print(f"rlx: config error: {e.args[0] if e.args else e}", file=sys.stderr)
    sys.exit(2)
  print("\n".join(lines), flush=True)
  sys.exit(0 if ok else 1)


if __name__ == "__main__":
  from absl import app, flags
  from ml_collections import config_flags
  _CONFIG = config_flags.DEFINE_config_file("config", None, "Config file[:arg].",
                                            lock_config=True)
  _MODEL = flags.DEFINE_string("model", None, "Model shape: a built-in name "
                               "(rlx/models/shapes.py), a config.json or an HF directory; "
                               "default: the config's model.")
  _DEVICES = flags.DEFINE_integer("devices", 0, "Simulated CPU devices for the mesh "
                                  "(0: those jax sees).")
  _HBM = flags.DEFINE_float("hbm_gb", 16.0, "Memory per device, GiB.")
  _PLATFORM = flags.DEFINE_enum("platform", "cpu", list(PLATFORMS),
                                "Also check that the steps lower for this platform.")
  flags.mark_flags_as_required(["config"])
  from rlx.train.config import parse_flags
  app.run(main, flags_parser=lambda argv: parse_flags(
      argv, "python -m rlx.plan --config=configs/FILE.py[:ARGS] [--config.KEY=VALUE ...] "
            "[--model=NAME] [--devices=N] [--hbm_gb=16] [--platform=cpu|tpu|cuda]"))
