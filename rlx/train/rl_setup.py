"""The RL run's fixed parts: sampling settings, stage functions, the step-0
state (with LoRA, the adapters and the frozen base), resume.

`setup_run(cfg, workdir, init_checkpoint)` returns the `RLRun` that every stage
of rlx/train/rl.py reads, the step-0 `TrainState` and the reference params.
"""
from __future__ import annotations

import dataclasses
import logging
import os
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from rlx import advantages as adv_lib
from rlx import models
from rlx import sampling
from rlx.data import make_prompt_iterator
from rlx.models import hf_io
from rlx.models import lora as lora_lib
from rlx.train import common, steps, structured
from rlx.train.checkpoint import Checkpointer
from rlx.train.optim import make_optimizer
from rlx.train.placement import Placement
from rlx.train.scoring import Scorer, build_rewards

# `sampling.sample` under jit: its host-side prompt check reads the mask, which
# a multi-process (non process-local) global array does not allow; prompts from
# `tokenize_prompts` are left-padded by construction.
sample_jit = jax.jit(sampling.sample, static_argnames=("graphdef", "settings"))


def _settings(cfg, *, eval_mode: bool, tokenizer) -> sampling.SamplingSettings:
  s = cfg.sampling
  stop = (tuple(int(t) for t in np.atleast_1d(tokenizer.eos_token_id))
          if tokenizer.eos_token_id is not None and not s.ignore_eos else ())
  common_kw = dict(stop_token_ids=stop, pad_token_id=int(tokenizer.pad_token_id or 0),
                   tail_rows=s.tail_rows)
  if eval_mode:
    greedy = cfg.eval.temperature <= 0
    max_new = cfg.eval.max_new_tokens if cfg.eval.max_new_tokens > 0 else s.max_new_tokens
    return sampling.SamplingSettings(
        temperature=1.0 if greedy else cfg.eval.temperature, greedy=greedy,
        max_new_tokens=max_new, group_size=1, **common_kw)
  return sampling.SamplingSettings(
      temperature=s.temperature, top_k=s.top_k, top_p=s.top_p, min_p=s.min_p,
      max_new_tokens=s.max_new_tokens, group_size=s.group_size, **common_kw)


def advantage_columns(cfg, rows: list[dict[str, Any]], repeat: int) -> dict[str, np.ndarray]:
  """config.advantage.columns {input: data column} of prompt `rows` as arrays,
  one row per completion (each prompt's value repeated `repeat` times)."""
  out = {}
  for name, column in dict(cfg.advantage.columns).items():
    missing = [i for i, r in enumerate(rows) if column not in r]
    if missing:
      raise ValueError(f"config.advantage.columns.{name}: data column {column!r} is missing "
                       f"in a prompt row (has: {', '.join(sorted(rows[missing[0]]))}).")
    values = np.asarray([r[column] for r in rows])
    if values.dtype.kind == "f":
      values = values.astype(np.float32)
    out[name] = np.repeat(values, repeat, axis=0)
  return out


def reward_columns(rows: list[dict[str, Any]], repeat: int = 1) -> dict[str, list]:
  """The reward functions' dataset columns (every field but the prompt) of
  prompt `rows`, each value repeated for the `repeat` completions of its prompt."""
  return {k: [r.get(k) for r in rows for _ in range(repeat)] for k in rows[0] if k != "prompt"}


@dataclasses.dataclass
class StageFns:
  """The jitted functions of a step (closed over the config)."""
  logprobs: Callable[..., Any]    # (params, tokens_NT, mask_NT, packing, prompt_len=)
  #                                   -> (logp_NC, entropy_NC)
  update: Callable[..., Any]      # (TrainState, batch dict) -> (TrainState, metrics); donated
  advantages: Callable[..., Any]  # (rewards_NK, valid_N, lengths_N, columns) -> (adv, diagnostics)
  keep: Callable[..., Any] | None  # (rewards_NK, valid_N, columns) -> keep_N; None: no filter
  model_params: Callable[..., Any]  # train-state params -> the model's params (LoRA: merged)
  # train-state params -> the sampler's (params, decoder Adapters or None); LoRA: the
  # frozen base with the adapter path (measured faster than merging once per step)
  sample_inputs: Callable[..., Any]


@dataclasses.dataclass
class Lora:
  """A LoRA run's frozen base: the train state's params are the adapters only,
  and the reference is the base with adapters off (reference params `{}`)."""
  spec: lora_lib.LoraSpec
  # {'params': base params (int8 / int4 targets with QLoRA), 'scales': {...}, 'key': dropout key}
  frozen: dict[str, Any]

  def effective(self, adapters, frozen, step=None):
    """(base params, decoder Adapters); step given (the update): LoRA dropout."""
    key = None if step is None or not self.spec.dropout else jax.random.fold_in(
        frozen["key"], step)
    return frozen["params"], lora_lib.decoder_adapters(self.spec, adapters, frozen["scales"],
                                                       key)

  def merged(self, adapters, frozen):
    """The params with the adapters merged in (int8 / int4 dequantized)."""
    return lora_lib.effective_params(self.spec, frozen["params"], adapters, frozen["scales"])


@dataclasses.dataclass
class RLRun:
  """Everything fixed for a run: config, sizes, model, data, stage functions."""
  cfg: Any
  place: Placement
  policy: common.Policy
  scorer: Scorer
  prompts: Any                # the resumable prompt-row iterator (global batches)
  eval_rows: list[dict]
  data_metrics: dict[str, float]  # row counts (read, skipped, too long), written with step 0
  fns: StageFns
  sample_settings: sampling.SamplingSettings
  eval_settings: sampling.SamplingSettings
  num_groups: int             # G prompts per step
  group_size: int             # R completions per prompt
  group_ids_N: jax.Array      # [N] prompt group of each completion row
  mine: slice                 # this process's prompts of the global batch
  detached_old: bool          # old log-probs = stop_gradient(current): not computed
  sync_ref: bool              # the reference follows the policy (checkpointed with it)
  correct_index: int          # reward column of config.loss.correct_reward, -1 if none
  base_key: jax.Array
  eval_key: jax.Array         # the same held-out draws at every eval
  lora: Lora | None = None
  # config.advantage.inputs: {key: (producer, options)} (rlx/train/structured.py)
  inputs: dict[str, tuple[Callable, dict]] = dataclasses.field(default_factory=dict)

  def input_sizes(self, n: int) -> structured.Sizes:
    """Sizes of the produced inputs of n completions (this process's rows)."""
    return structured.Sizes(n=n, r=self.group_size, c=self.cfg.sampling.max_new_tokens,
                            k=len(self.scorer.names))

  @property
  def num_completions(self) -> int:
    return self.num_groups * self.group_size

  @property
  def local_groups(self) -> int:
    return self.mine.stop - self.mine.start


def shared_prompt_group(cfg, rows: int) -> int:
  """The group size G when config.train.share_prompts applies to a pass over `rows`
  rows in groups of G (sharing on, packing off, whole groups), else 1. The trainer
  also checks the prompts themselves (rl.shared_group_size)."""
  g = cfg.sampling.group_size
  if not cfg.train.share_prompts or cfg.train.packing or rows % g:
    return 1
  return g


def _check_batches(cfg, place: Placement) -> None:
  n = cfg.train.batch_prompts * cfg.sampling.group_size
  place.check_batch(cfg.train.batch_prompts, "config.train.batch_prompts")
  place.check_batch(cfg.eval.batch_prompts, "config.eval.batch_prompts")
  if cfg.train.minibatches > 1:
    place.check_batch(n // cfg.train.minibatches, "completions per minibatch (config.train."
                      "batch_prompts * sampling.group_size / train.minibatches)")


def _initial_state(cfg, place: Placement, policy: common.Policy, tx
                   ) -> tuple[steps.TrainState, Any, Lora | None]:
  """The step-0 train state (params placed on the mesh), the reference params
  and, with LoRA, the frozen base (the state then holds the adapters)."""
  p_sh = place.param_shardings(policy.params)
  params = place.put_params(policy.params, p_sh)
  lora = None
  if cfg.model.lora.rank:
    lo = cfg.model.lora
    spec = lora_lib.make_spec(policy.cfg, lo.rank, lo.alpha, lo.targets, lo.quantize,
                              lo.dropout)
    scales = {}
    if spec.quantize != "none":
      params, scales = lora_lib.quantize_base(spec, params)
    lora = Lora(spec, {"params": params, "scales": scales,
                       "key": place.replicated(np.asarray(jax.random.PRNGKey(cfg.seed + 2)))})
    adapters = lora_lib.init_adapters(policy.cfg, spec, jax.random.PRNGKey(cfg.seed + 1),
                                      policy.cfg.param_dtype)
    p_sh = place.param_shardings(adapters, logical_axes=lora_lib.logical_axes(policy.cfg, spec))
    params = place.put_params(adapters, p_sh)
    ref_params = {} if cfg.ref.source == "initial" else None  # {}: adapters off
  elif cfg.ref.source == "checkpoint":
    _, _, ref_params = hf_io.load_hf(cfg.ref.checkpoint, dtype=policy.cfg.dtype,
                                     param_dtype=policy.cfg.param_dtype)
    ref_params = place.put_params(ref_params, p_sh)
  elif cfg.ref.source == "initial":
    ref_params = jax.tree.map(jnp.copy, params)
  else:
    ref_params = None
  state = steps.TrainState(step=place.replicated(np.zeros((), np.int32)), params=params,
                           opt_state=place.init_opt_state(tx, params, p_sh),
                           skipped=place.replicated(np.zeros((), np.int32)))
  return state, ref_params, lora


def jitted_steps(cfg, graphdef, tx, state: steps.TrainState, detached_old: bool,
                 effective: Callable[..., Any] | None = None) -> tuple[Callable, Callable]:
  """(logprobs, update): the config's jitted log-prob and update steps (see
  rlx/train/steps.py; with LoRA `effective`, both take the frozen base).
  `state` (arrays or ShapeDtypeStructs with shardings) pins the update's layout."""
  prompt_len, chunk = cfg.data.max_prompt_len, cfg.model.logprob_chunk
  logprobs = steps.make_logprobs_fn(graphdef, prompt_len, cfg.sampling.temperature, chunk,
                                    effective=effective)
  update = steps.make_update_fn(
          graphdef, tx, cfg.loss.terms,
          temperature=cfg.sampling.temperature, chunk=chunk, detached_old=detached_old,
          max_len=cfg.sampling.max_new_tokens, num_groups=cfg.train.batch_prompts,
          state_shardings=jax.tree.map(lambda x: x.sharding, state),
          remat=False if cfg.model.remat == "none" else cfg.model.remat, effective=effective)
  return logprobs, update


_SHARED: dict[Any, Any] = {}


def _shared(key: Any, build: Callable[[], Any]) -> Any:
  """One jitted function per key in a process, so that runs of the same model,
  loss and optimizer settings (a sweep over estimators, the end-to-end tests)
  compile the update and log-prob steps once; key None: not shared."""
  if key[1] is None:
    return build()
  if key not in _SHARED:
    _SHARED[key] = build()
  return _SHARED[key]


def _stage_fns(cfg, policy: common.Policy, tx, state: steps.TrainState, scorer: Scorer,
               detached_old: bool, group_ids_N: jax.Array, lora: Lora | None) -> StageFns:
  num_groups = cfg.train.batch_prompts
  weights_K = jnp.asarray(scorer.weights)

  transforms = [dict(t) for t in cfg.advantage.transforms]

  def inputs(rewards_NK, valid_N, columns, lengths_N=None):
    """The batch's AdvantageInputs, with the configured columns and transforms."""
    fields, extras = adv_lib.column_inputs(columns, cfg.sampling.group_size)
    x = adv_lib.AdvantageInputs(
        rewards_NK=rewards_NK, group_ids_N=group_ids_N, valid_N=valid_N, weights_K=weights_K,
        lengths_N=lengths_N, reward_names=scorer.names, extras=extras, **fields)
    return adv_lib.apply_transforms(x, transforms)

  est_name, est_opts = cfg.advantage.estimator, dict(cfg.advantage.options)
  keep = None
  if cfg.filter.name != "none":
    filt_name, filt_opts = cfg.filter.name, dict(cfg.filter.options)
    keep = jax.jit(lambda r, v, c: adv_lib.apply_filter(
        filt_name, inputs(r, v, c), num_groups, **filt_opts)[0])
  effective = None if lora is None else lora.effective
  state_shardings = jax.tree.map(lambda x: x.sharding, state)
  model_key = None if lora is not None else (
      policy.graphdef, cfg.data.max_prompt_len, cfg.sampling.temperature,
      cfg.model.logprob_chunk, cfg.sampling.max_new_tokens, num_groups, detached_old,
      cfg.model.remat, cfg.loss.to_json_best_effort(sort_keys=True),
      cfg.optim.to_json_best_effort(sort_keys=True),
      cfg.train.steps * cfg.train.epochs * cfg.train.minibatches,
      jax.tree.structure(state_shardings), tuple(jax.tree.leaves(state_shardings)))
  logprobs, update = _shared(("steps", model_key), lambda: jitted_steps(
      cfg, policy.graphdef, tx, state, detached_old, effective))
  model_params = lambda params: params
  sample_inputs = lambda params: (params, None)
  if lora is not None:  # the frozen base is an argument of every call, never donated
    logprobs = (lambda fn: lambda p, t, m, *a, **k: fn(p, lora.frozen, t, m, *a, **k))(logprobs)
    update = (lambda fn: lambda s, b, **k: fn(s, b, lora.frozen, **k))(update)
    merge = jax.jit(lora.merged)  # for the export
    model_params = lambda params: merge(params, lora.frozen)
    sample_inputs = lambda params: lora.effective(params, lora.frozen)
  return StageFns(
      logprobs=logprobs,
      update=update,
      advantages=jax.jit(lambda r, v, ln, c: adv_lib.compute_advantages(
          est_name, inputs(r, v, c, ln), num_groups, **est_opts)),
      keep=keep, model_params=model_params, sample_inputs=sample_inputs)


def setup_run(cfg, workdir: str, init_checkpoint: str | None
              ) -> tuple[RLRun, steps.TrainState, Any]:
  """The run's fixed parts, the step-0 train state and the reference params."""
  place = Placement(cfg)
  _check_batches(cfg, place)
  from rlx.parallel import models as aux_models
  aux_models.set_reward_model_mesh(
      aux_models.resolve_reward_model_mesh(cfg.mesh.reward_models, place.mesh, place.rules),
      place.rules)
  policy = common.load_policy(cfg, workdir, checkpoint=init_checkpoint)
  # The decoder sees the mesh (activation constraints, shard_map'd kernels): every
  # step built from this graphdef carries it.
  mcfg, graphdef = models.with_attention(policy.cfg, mesh=place.model_mesh())
  policy = dataclasses.replace(policy, cfg=mcfg, graphdef=graphdef)
  updates_per_step = cfg.train.epochs * cfg.train.minibatches
  tx = make_optimizer(cfg.optim, cfg.train.steps * updates_per_step)
  state, ref_params, lora = _initial_state(cfg, place, policy, tx)
  scorer = Scorer(build_rewards(cfg.rewards), threads=cfg.reward_threads, errors=cfg.reward_errors,
                  max_steps=cfg.train.steps)
  data_metrics: dict[str, float] = {}
  tok = policy.tokenizer
  train_rows = common.load_rows(cfg, "train", cfg.data.num_train, tokenizer=tok,
                                stats=data_metrics)
  eval_rows = common.load_rows(cfg, "eval", cfg.data.num_eval, tokenizer=tok,
                               stats=data_metrics)
  # Every process reads the whole global batch (prompt rows are small) and
  # keeps its rows `mine`: the batch's row order, hence the samples, and the
  # iterator state do not depend on the number of processes.
  prompts = make_prompt_iterator(train_rows, batch_prompts=cfg.train.batch_prompts,
                                 seed=cfg.seed, shuffle=cfg.data.shuffle,
                                 process_index=0, process_count=1)
  detached_old = cfg.loss.old_logprobs == "auto" and updates_per_step == 1
  group_ids_N = jnp.repeat(jnp.arange(cfg.train.batch_prompts, dtype=jnp.int32),
                           cfg.sampling.group_size)
  base_key = jax.random.PRNGKey(cfg.seed)
  run = RLRun(
      cfg=cfg, place=place, policy=policy, scorer=scorer, prompts=prompts,
      eval_rows=eval_rows, data_metrics=data_metrics,
      fns=_stage_fns(cfg, policy, tx, state, scorer, detached_old, group_ids_N, lora),
      sample_settings=_settings(cfg, eval_mode=False, tokenizer=policy.tokenizer),
      eval_settings=_settings(cfg, eval_mode=True, tokenizer=policy.tokenizer),
      num_groups=cfg.train.batch_prompts, group_size=cfg.sampling.group_size,
      group_ids_N=group_ids_N,
      mine=place.local_rows(cfg.train.batch_prompts), detached_old=detached_old,
      sync_ref=ref_params is not None and cfg.ref.sync_every > 0,
      correct_index=(list(scorer.names).index(cfg.loss.correct_reward)
                     if cfg.loss.correct_reward else -1),
      base_key=base_key, eval_key=jax.random.fold_in(base_key, 2**31 - 1), lora=lora,
      inputs=structured.check_inputs(cfg.advantage.inputs))
  return run, state, ref_params


def _checkpoint_target(run: RLRun, state: steps.TrainState, ref_params: Any) -> dict[str, Any]:
  return {"train": state, "ref": ref_params} if run.sync_ref else {"train": state}


def restore(run: RLRun, ckpt: Checkpointer, state: steps.TrainState, ref_params: Any
            ) -> tuple[int, steps.TrainState, Any]:
  """(first step, state, reference) from the workdir's latest checkpoint, if any."""
  start = ckpt.latest_step()
  if start is None:
    return 0, state, ref_params
  restored, data_state, _ = ckpt.restore(start, _checkpoint_target(run, state, ref_params))
  run.prompts.set_state(data_state)
  logging.info("Resumed from step %d in %s", start, os.path.dirname(ckpt.directory))
  return start, restored["train"], restored["ref"] if run.sync_ref else ref_params
