"""An RL run's device arrays as shapes, and its jitted steps on them.

`abstract_run(cfg, mcfg)` builds what rlx/train/rl_setup.py builds for a run
(the train state, the reference, with LoRA the frozen base; the sample,
log-prob and update steps), but as `jax.ShapeDtypeStruct`s carrying the mesh
shardings (`jax.eval_shape`: no weights are allocated). Each `Step` can be
compiled (`compile_step`: memory analysis) or exported for another platform
(`export_step`). rlx.plan and tests/test_export_steps.py use it.
"""
from __future__ import annotations

import dataclasses
import types
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax import export
from jax.sharding import NamedSharding, PartitionSpec as P

from rlx import models, parallel
from rlx.models import lora as lora_lib
from rlx.sampling import sampler as sampler_lib
from rlx.train import steps
from rlx.train.optim import make_optimizer
from rlx.train.placement import Placement
from rlx.train.rl_setup import Lora, _settings, jitted_steps, shared_prompt_group

sds = jax.ShapeDtypeStruct


@dataclasses.dataclass
class Step:
  """One jitted call of an RL step on abstract arguments."""
  name: str                  # sample | eval_sample | ref_logprobs | old_logprobs | update
  fn: Callable[..., Any]     # a jax.jit function
  args: tuple                # ShapeDtypeStructs (pytrees) with shardings
  persistent: tuple          # per arg: True if it is the run's persistent state (not a transient)
  kwargs: dict = dataclasses.field(default_factory=dict)  # static arguments
  compiled: Any = None       # set once compiled (compile_step)


@dataclasses.dataclass
class AbstractRun:
  model: Any                 # rlx.models.ModelConfig
  place: Placement
  state: steps.TrainState    # ShapeDtypeStructs; LoRA: params = the adapters
  ref_params: Any            # None (no reference), {} (LoRA: base with adapters off), params
  frozen: Any                # LoRA: {'params': base (int8 with QLoRA), 'scales'}; else None
  lora: lora_lib.LoraSpec | None
  steps: list[Step]
  kv_cache: Any              # the train sampler's KV cache [L, N, S, J, E] k and v (shapes)

  def persistent(self) -> dict[str, Any]:
    """The arrays that live for the whole run, by part."""
    out = {"parameters": self.state.params, "optimizer state": self.state.opt_state,
           "step counters": (self.state.step, self.state.skipped)}
    if self.frozen is not None:
      out["frozen base"] = self.frozen
    if self.ref_params:
      out["reference"] = self.ref_params
    return out


def _with(tree: Any, shardings: Any) -> Any:
  return jax.tree.map(lambda x, s: sds(x.shape, x.dtype, sharding=s), tree, shardings)


def _batch(place: Placement, shape: tuple[int, ...], dtype: Any) -> jax.ShapeDtypeStruct:
  return sds(shape, jnp.dtype(dtype), sharding=parallel.batch_sharding(place.mesh, len(shape),
                                                                       place.rules))


def model_state(cfg, mcfg, place: Placement):
  """(graphdef, TrainState, reference, frozen, LoRA spec) as shapes on `place`'s mesh,
  as rl_setup._initial_state lays them out."""
  mcfg = mcfg.replace(mesh=place.model_mesh())  # as rl_setup.setup_run
  graphdef, params = models.abstract_model(mcfg)
  p_sh = place.param_shardings(params)
  params = _with(params, p_sh)
  updates_per_step = cfg.train.epochs * cfg.train.minibatches
  tx = make_optimizer(cfg.optim, cfg.train.steps * updates_per_step)
  replicated = NamedSharding(place.mesh, P())
  spec = frozen = None
  if cfg.model.lora.rank:
    lo = cfg.model.lora
    spec = lora_lib.make_spec(mcfg, lo.rank, lo.alpha, lo.targets, lo.quantize, lo.dropout)
    base, scales = params, {}
    if spec.quantize != "none":  # int8/int4 weights keep their param's shards; scales replicated
      base, scales = jax.eval_shape(lambda p: lora_lib.quantize_base(spec, p), params)
      base = _with(base, p_sh)
      scales = _with(scales, jax.tree.map(lambda _: replicated, scales))
    frozen = {"params": base, "scales": scales, "key": sds((2,), jnp.uint32, sharding=replicated)}
    adapters = jax.eval_shape(lambda: lora_lib.init_adapters(
        mcfg, spec, jax.random.PRNGKey(0), mcfg.param_dtype))
    p_sh = place.param_shardings(adapters, logical_axes=lora_lib.logical_axes(mcfg, spec))
    params = _with(adapters, p_sh)
    ref = {} if cfg.ref.source == "initial" else None
  else:
    ref = params if cfg.ref.source in ("initial", "checkpoint") else None
  opt = jax.eval_shape(tx.init, params)
  opt = _with(opt, parallel.opt_state_shardings(opt, params, p_sh, place.mesh))
  counter = sds((), jnp.int32, sharding=replicated)
  state = steps.TrainState(step=counter, params=params, opt_state=opt, skipped=counter)
  return graphdef, state, ref, frozen, spec, tx


def abstract_run(cfg, mcfg, devices: Any = None) -> AbstractRun:
  """The run of `cfg` with model `mcfg` (a ModelConfig) on `devices` (default all), as shapes."""
  place = Placement(cfg, devices)
  place.check_batch(cfg.train.batch_prompts, "config.train.batch_prompts")
  g, r = cfg.train.batch_prompts, cfg.sampling.group_size
  n, p, c = g * r, cfg.data.max_prompt_len, cfg.sampling.max_new_tokens
  if cfg.train.minibatches > 1:
    place.check_batch(n // cfg.train.minibatches, "completions per minibatch")
  graphdef, state, ref, frozen, spec, tx = model_state(cfg, mcfg, place)
  effective = None if spec is None else Lora(spec, frozen).effective
  updates_per_step = cfg.train.epochs * cfg.train.minibatches
  detached_old = cfg.loss.old_logprobs == "auto" and updates_per_step == 1
  logprobs, update = jitted_steps(cfg, graphdef, tx, state, detached_old, effective)
  ids = types.SimpleNamespace(eos_token_id=mcfg.eos_token_id, pad_token_id=mcfg.pad_token_id)
  key = sds((2,), jnp.uint32, sharding=NamedSharding(place.mesh, P()))
  out: list[Step] = []

  # The sampler reads the base and the adapters (rl_setup: the adapter path).
  sample_fn, model_args = sampler_lib._sample_jit, (state.params,)
  if spec is not None:
    def sample_lora(graphdef, adapters, frozen, tokens, mask, key, settings):
      base, ad = effective(adapters, frozen)
      return sampler_lib._sample(graphdef, base, tokens, mask, key, settings, ad)
    sample_fn = jax.jit(sample_lora, static_argnames=("graphdef", "settings"))
    model_args = (state.params, frozen)

  def sample_step(name, rows, settings):
    prompts = (_batch(place, (rows, p), jnp.int32), _batch(place, (rows, p), jnp.bool_))
    out.append(Step(name, sample_fn, (graphdef, *model_args, *prompts, key),
                    (True,) * (1 + len(model_args)) + (False, False, False),
                    {"settings": settings}))

  sample_step("sample", g, _settings(cfg, eval_mode=False, tokenizer=ids))
  ev = _settings(cfg, eval_mode=True, tokenizer=ids)
  # An eval with no more prompts and no longer completions needs no more memory
  # (fewer cache rows, the same lengths): it is not compiled again.
  if cfg.train.eval_every and (cfg.eval.batch_prompts > g or ev.max_new_tokens > c):
    sample_step("eval_sample", cfg.eval.batch_prompts, ev)

  tokens, mask = _batch(place, (n, p + c), jnp.int32), _batch(place, (n, p + c), jnp.bool_)
  lead = (state.params, frozen) if spec is not None else ()
  share = shared_prompt_group(cfg, n)  # train.share_prompts: each group's prompt runs once
  m = n // cfg.train.minibatches
  if ref is not None:
    ref_args = ({}, frozen) if spec is not None else (ref,)
    out.append(Step("ref_logprobs", logprobs, (*ref_args, tokens, mask),
                    (True,) * len(ref_args) + (False, False), {"group_size": share}))
  if not detached_old and cfg.loss.old_logprobs != "sampler":
    old_args = lead if spec is not None else (state.params,)
    out.append(Step("old_logprobs", logprobs, (*old_args, tokens, mask),
                    (True,) * len(old_args) + (False, False), {"group_size": share}))
  f32 = jnp.float32
  batch = dict(tokens=_batch(place, (m, p + c), jnp.int32),
               attn_mask=_batch(place, (m, p + c), jnp.bool_),
               loss_mask=_batch(place, (m, c), f32), adv=_batch(place, (m,), f32),
               old_logp=_batch(place, (m, c), f32), sample_logp=_batch(place, (m, c), f32),
               ref_logp=_batch(place, (m, c), f32), correct=_batch(place, (m,), jnp.bool_),
               group=_batch(place, (m,), jnp.int32), lengths=_batch(place, (m,), jnp.int32))
  kw = {"group_size": shared_prompt_group(cfg, m)}
  if spec is None:
    out.append(Step("update", update, (state, batch), (True, False), kw))
  else:
    out.append(Step("update", update, (state, batch, frozen), (True, False, True), kw))
  cache = jax.eval_shape(lambda: models.init_cache(mcfg, n, p + c - 1))
  cache = _with(cache, parallel.cache_sharding(cache, place.mesh, place.rules))
  return AbstractRun(mcfg, place, state, ref, frozen, spec, out, cache)


def bytes_per_device(tree: Any) -> int:
  """Bytes of one device's shards of `tree` (ShapeDtypeStructs or arrays with shardings;
  the largest shard where they differ)."""
  total = 0
  for x in jax.tree.leaves(tree):
    if not hasattr(x, "dtype"):
      continue
    shape = x.sharding.shard_shape(x.shape) if getattr(x, "sharding", None) else x.shape
    total += int(np.prod(shape)) * jnp.dtype(x.dtype).itemsize
  return total


def compile_step(step: Step):
  """The step compiled for the running backend (XLA:CPU here), once."""
  if step.compiled is None:
    step.compiled = step.fn.lower(*step.args, **step.kwargs).compile()
  return step.compiled


def export_step(step: Step, platform: str) -> export.Exported:
  """The step lowered and serialized for `platform` (jax.export; no device needed)."""
  return export.export(step.fn, platforms=[platform])(*step.args, **step.kwargs)
