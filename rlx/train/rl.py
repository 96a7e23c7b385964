"""The RL loop: sample -> score -> filter -> advantages -> ref log-probs -> updates.

`train_rl` reads as the algorithm; every step calls these stages in order,
each a function from typed inputs to a typed output:

    groups   = collect_groups(run, params, ref_params, key, step)   # sample, score, top up
    batch    = build_batch(run, groups)                        # kept groups -> global rows
    adv      = compute_advantages(run, batch)
    logprobs = reference_and_old_logprobs(run, batch, groups, params, ref_params)  # trimmed
    state, updates = run_updates(run, state, update_batch(run, batch, adv, logprobs), key,
                                 logprobs.trimmed.group_size)
    metrics  = step_metrics(run, groups, batch, adv, updates, t0)
    log_eval_checkpoint(run, out, step, metrics, state, ref_params, stop)

`RLRun` (from `setup_run`, rlx/train/rl_setup.py) holds what is fixed for a
run; evaluation, the metrics row, logging and checkpoints (the last line) are
in rlx/train/rl_outputs.py. Reward functions run
on the host in threads while the device computes reference log-probs. Every
jitted function sees global (possibly sharded) arrays; each process feeds,
decodes and scores only its own rows (see rlx/train/placement.py). Shape
letters (docs/shapes.md): G prompt groups, R completions per prompt,
N = G * R completions, P prompt and C completion tokens, K rewards.
"""
from __future__ import annotations

import dataclasses
import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from rlx import parallel, sampling
from rlx.data import tokenize_prompts
from rlx.train import layout, steps, structured
from rlx.train.rl_outputs import (Outputs, _Stop, eval_line, evaluate, finish,
                                  log_eval_checkpoint, step_metrics)
from rlx.train.rl_setup import (RLRun, advantage_columns, restore, reward_columns, sample_jit,
                                setup_run, shared_prompt_group)
from rlx.train.checkpoint import Checkpointer
from rlx.train.metrics import MetricsWriter
from rlx.train.scoring import completion_id_lists

# ---- stage 1: collect groups (dynamic-sampling top-up) ---------------------------


@dataclasses.dataclass
class Group:
  """One prompt's R completions (this process's NumPy rows), their rewards and
  the data columns the advantage step reads (config.advantage.columns)."""
  rollout: sampling.Rollout  # fields [R, ...]
  rewards_RK: np.ndarray
  columns_R: dict[str, np.ndarray]


@dataclasses.dataclass
class CollectedGroups:
  """Groups sampled for a step: those the filter kept, then the rejected ones."""
  kept: list[Group]
  dropped: list[Group]
  rounds: int                          # sampling rounds (1 without a filter)
  score_metrics: dict[str, float]      # reward/NAME/missing|raised, summed over rounds
  sample_s: float
  score_s: float
  ref_logprobs_NC: jax.Array | None    # reference log-probs dispatched during scoring


def _sample_round(run: RLRun, params: Any, ref_params: Any, key: jax.Array, step: int):
  """One round: sample this step's next prompt batch, decode and score this
  process's rows, produce the configured estimator inputs. Returns (rollout
  (local), rewards_NK, columns (data columns and produced inputs), score
  metrics, reference log-probs or None, sample seconds, score seconds)."""
  rows = {k: v[run.mine] for k, v in next(run.prompts).items()}
  prompts = list(rows["prompt"])
  rows = [dict(zip(rows, values)) for values in zip(*rows.values())]
  tokens, mask = tokenize_prompts(run.policy.tokenizer, prompts, run.cfg.data.max_prompt_len)
  t = time.time()
  sample_params, adapters = run.fns.sample_inputs(params)
  rollout = sample_jit(run.policy.graphdef, sample_params,
                    *run.place.to_global((tokens, mask), run.num_groups), key,
                    run.sample_settings, adapters)
  ref_logprobs, local = None, run.place.to_local(rollout)
  if ref_params is not None and run.fns.keep is None:  # computed while the host scores
    ref_logprobs = device_logprobs(run, ref_params, trimmed(run, rollout, local))
  rollout = local
  texts = sampling.decode_completions(run.policy.tokenizer, rollout)
  sample_s, t = time.time() - t, time.time()
  prompts_n = [p for p in prompts for _ in range(run.group_size)]
  columns, ids = (reward_columns(rows, run.group_size),
                  completion_id_lists(rollout.completion_tokens, rollout.completion_mask))
  rewards_NK, score_m = run.scorer(prompts_n, texts, columns, step=step, completion_ids=ids)
  columns_N = advantage_columns(run.cfg, rows, run.group_size)
  columns_N.update(structured.produce(run.inputs, structured.Round(
      prompts=prompts_n, completions=texts, completion_ids=ids, columns=columns,
      rewards_NK=rewards_NK, reward_names=run.scorer.names, sizes=run.input_sizes(len(texts)),
      tokenizer=run.policy.tokenizer, step=step,
      sample_reference=None if ref_params is None else lambda m: _reference_rewards(
          run, ref_params, rows, tokens, mask, jax.random.fold_in(key, 1), m))))
  return rollout, rewards_NK, columns_N, score_m, ref_logprobs, sample_s, time.time() - t


def _reference_rewards(run: RLRun, ref_params: Any, rows: list[dict], tokens, mask,
                       key: jax.Array, m: int) -> np.ndarray:
  """Rewards [local prompts * m, K] of m completions per prompt sampled with the
  reference params (config.advantage.inputs producer reference_samples)."""
  settings = dataclasses.replace(run.sample_settings, group_size=m)
  rollout = run.place.to_local(sample_jit(
      run.policy.graphdef, run.fns.model_params(ref_params),
      *run.place.to_global((tokens, mask), run.num_groups), key, settings))
  texts = sampling.decode_completions(run.policy.tokenizer, rollout)
  rewards, _ = run.scorer([r["prompt"] for r in rows for _ in range(m)], texts,
                          reward_columns(rows, m),
                          completion_ids=completion_id_lists(rollout.completion_tokens,
                                                             rollout.completion_mask))
  return rewards


def _kept_groups(run: RLRun, rewards_NK: np.ndarray, columns_N: dict) -> np.ndarray:
  """[local groups] bool: groups of this process that the filter keeps."""
  if run.fns.keep is None:
    return np.ones(run.local_groups, bool)
  n = run.num_completions
  rewards, columns = run.place.to_global((rewards_NK, columns_N), n)
  keep_N = run.place.to_local(run.fns.keep(rewards, jnp.ones((n,), bool), columns))
  return np.asarray(keep_N).reshape(run.local_groups, run.group_size).all(1)


def _split_groups(run: RLRun, rollout: sampling.Rollout, rewards_NK: np.ndarray,
                  columns_N: dict) -> list[Group]:
  r = run.group_size
  rows = lambda x, b: x[b * r:(b + 1) * r]
  return [Group(jax.tree.map(lambda x: rows(x, b), rollout), rows(rewards_NK, b),
                {k: rows(v, b) for k, v in columns_N.items()})
          for b in range(run.local_groups)]


def collect_groups(run: RLRun, params: Any, ref_params: Any, key: jax.Array,
                   step: int) -> CollectedGroups:
  """Samples and scores prompt groups; with a filter, samples again (up to
  config.filter.max_rounds more rounds) while any process has fewer kept
  groups than its share of the batch. Scorer counts (missing, raised) add
  up over rounds and processes; values that rewards log are averaged."""
  out = CollectedGroups([], [], 0, {}, 0.0, 0.0, None)
  while True:
    rollout, rewards_NK, columns_N, score_m, ref_logprobs, sample_s, score_s = _sample_round(
        run, params, ref_params, jax.random.fold_in(key, out.rounds), step)
    out.ref_logprobs_NC = ref_logprobs
    out.sample_s += sample_s
    out.score_s += score_s
    for k, v in score_m.items():
      out.score_metrics[k] = out.score_metrics.get(k, 0.0) + v
    keep_G = _kept_groups(run, rewards_NK, columns_N)
    for keep, group in zip(keep_G, _split_groups(run, rollout, rewards_NK, columns_N)):
      (out.kept if keep else out.dropped).append(group)
    out.rounds += 1
    short = run.place.gather(np.asarray([len(out.kept) < run.local_groups]))
    if run.fns.keep is None or not short.any() or out.rounds > run.cfg.filter.max_rounds:
      break
  if run.place.multi:  # scorer counts of all processes
    names = sorted(out.score_metrics)
    total = run.place.sum_over_processes(
        np.asarray([out.score_metrics[k] for k in names], np.float32))
    out.score_metrics = dict(zip(names, total.tolist()))
  shares = jax.process_count() * out.rounds
  out.score_metrics = {k: v if _is_count(k) else v / shares for k, v in out.score_metrics.items()}
  return out


def _is_count(metric: str) -> bool:
  return metric.endswith(("/missing", "/raised"))


# ---- stage 2: the step's batch --------------------------------------------------


@dataclasses.dataclass
class StepBatch:
  """The step's N completions: kept groups first, rejected ones (valid=False)
  filling the remaining rows. `local_*` are this process's NumPy rows; the
  rest are global (sharded) arrays of all N rows."""
  local_rollout: sampling.Rollout
  local_rewards_NK: np.ndarray
  local_valid_N: np.ndarray
  rollout: sampling.Rollout
  rewards_NK: jax.Array
  valid_N: jax.Array
  correct_N: jax.Array
  columns_N: dict[str, jax.Array]    # config.advantage.columns, one row per completion


def build_batch(run: RLRun, groups: CollectedGroups) -> StepBatch:
  """Kept groups (then rejected ones, marked invalid) -> the step's global batch."""
  chosen = (groups.kept + groups.dropped)[:run.local_groups]
  n_kept = min(len(groups.kept), run.local_groups)
  rollout = jax.tree.map(lambda *xs: np.concatenate(xs), *[g.rollout for g in chosen])
  rewards_NK = np.concatenate([g.rewards_RK for g in chosen])
  columns_N = {k: np.concatenate([g.columns_R[k] for g in chosen]) for k in chosen[0].columns_R}
  valid_N = np.repeat(np.arange(run.local_groups) < n_kept, run.group_size)
  if run.correct_index >= 0:
    correct_N = (np.nan_to_num(rewards_NK[:, run.correct_index], nan=-np.inf)
                 >= run.cfg.loss.correct_threshold)
  else:
    correct_N = np.zeros(len(valid_N), bool)
  glob = run.place.to_global(
      {"rollout": rollout, "rewards": rewards_NK, "valid": valid_N, "correct": correct_N,
       "columns": columns_N}, run.num_completions)
  return StepBatch(local_rollout=rollout, local_rewards_NK=rewards_NK, local_valid_N=valid_N,
                   rollout=glob["rollout"], rewards_NK=glob["rewards"], valid_N=glob["valid"],
                   correct_N=glob["correct"], columns_N=glob["columns"])


# ---- stage 3: advantages --------------------------------------------------------


@dataclasses.dataclass
class Advantages:
  values: jax.Array            # [N] (or [N, C] for token-level estimators), 0 on invalid rows
  diagnostics: dict[str, Any]  # estimator/* and section-7 diagnostics (device scalars)


def compute_advantages(run: RLRun, batch: StepBatch) -> Advantages:
  values, diagnostics = run.fns.advantages(
      batch.rewards_NK, batch.valid_N, batch.rollout.completion_lengths.astype(jnp.float32),
      batch.columns_N)
  return Advantages(values, diagnostics)


# ---- stage 4: reference and old log-probs ---------------------------------------


@dataclasses.dataclass
class TrimmedRollout:
  """The step's rollout without its padding columns (rlx/train/layout.py)."""
  rollout: sampling.Rollout  # global; prompts [N, P'], per-token fields [N, C']
  trim: layout.Trim
  prompt_len_N: np.ndarray      # host, every global row: real prompt tokens
  completion_len_N: np.ndarray  # host, every global row: completion tokens
  group_size: int = 1           # rows in groups of this many sharing their prompt


def _trim_columns(rollout: sampling.Rollout, trim: layout.Trim) -> sampling.Rollout:
  c = trim.completion_len
  return rollout.replace(
      prompt_tokens=rollout.prompt_tokens[:, -trim.prompt_len:],
      prompt_mask=rollout.prompt_mask[:, -trim.prompt_len:],
      completion_tokens=rollout.completion_tokens[:, :c],
      completion_mask=rollout.completion_mask[:, :c],
      sample_logprobs=rollout.sample_logprobs[:, :c],
      policy_logprobs=rollout.policy_logprobs[:, :c])


_trim_columns_jit = jax.jit(_trim_columns, static_argnums=1)


def trimmed(run: RLRun, rollout: sampling.Rollout, local: sampling.Rollout) -> TrimmedRollout:
  """`rollout` (global) trimmed to its longest real prompt and completion, each
  rounded up to config.train.prompt_buckets / length_buckets; `local` is this
  process's NumPy copy (the lengths are gathered from every process)."""
  cfg = run.cfg
  prompt_N = run.place.gather(np.asarray(local.prompt_mask).sum(1))
  completion_N = run.place.gather(np.asarray(local.completion_lengths))
  trim = layout.trim_for(
      prompt_N, completion_N,
      layout.length_buckets(cfg.train.prompt_buckets, cfg.data.max_prompt_len,
                            "train.prompt_buckets"),
      layout.length_buckets(cfg.train.length_buckets, cfg.sampling.max_new_tokens,
                            "train.length_buckets"))
  return TrimmedRollout(_trim_columns_jit(rollout, trim), trim, prompt_N, completion_N,
                        shared_group_size(run, local))


def shared_group_size(run: RLRun, local: sampling.Rollout) -> int:
  """config.train.share_prompts: the group size when every block of that many
  consecutive rows holds one prompt (checked on the tokens), so the log-prob
  and update passes run each prompt once; else 1 (also with packing)."""
  if shared_prompt_group(run.cfg, run.cfg.sampling.group_size) == 1:  # off: no gather
    return 1
  prompts = run.place.gather(np.where(local.prompt_mask, local.prompt_tokens, -1))
  g = shared_prompt_group(run.cfg, len(prompts))
  if g == 1:
    return 1
  blocks = prompts.reshape(len(prompts) // g, g, -1)
  return g if bool(np.all(blocks == blocks[:, :1])) else 1


def packing(run: RLRun, prompt_len_n: np.ndarray, completion_len_n: np.ndarray,
            trim: layout.Trim) -> dict[str, jax.Array] | None:
  """config.train.packing: the packing indices of n trimmed rows with these
  lengths (host ints, the same on every process) as global arrays; else None."""
  if not run.cfg.train.packing:
    return None
  place = run.place
  shards = parallel.num_batch_shards(place.mesh, parallel.batch_mesh_axes(place.mesh, place.rules))
  n = len(prompt_len_n)
  pk = layout.pack(prompt_len_n, completion_len_n, trim, layout.row_buckets(n, shards))
  return {k: place.to_global(v[place.local_rows(v.shape[0])], v.shape[0]) for k, v in pk.items()}


def device_logprobs(run: RLRun, params: Any, t: TrimmedRollout) -> jax.Array:
  """Completion log-probs [N, C'] of the trimmed (and, configured, packed) rollout."""
  ro = t.rollout
  pk = packing(run, t.prompt_len_N, t.completion_len_N, t.trim)
  return run.fns.logprobs(params, ro.tokens, ro.mask, pk, prompt_len=t.trim.prompt_len,
                          group_size=t.group_size)[0]


@dataclasses.dataclass
class StepLogprobs:
  reference_NC: jax.Array  # zeros without a reference model
  old_NC: jax.Array        # zeros when the old policy is the detached current one
  trimmed: TrimmedRollout  # the columns C' of both, which the updates keep too


def reference_and_old_logprobs(run: RLRun, batch: StepBatch, groups: CollectedGroups,
                               params: Any, ref_params: Any) -> StepLogprobs:
  t = trimmed(run, batch.rollout, batch.local_rollout)
  rollout = t.rollout
  shape = rollout.completion_mask.shape
  if ref_params is None:
    reference = jnp.zeros(shape, jnp.float32)
  elif groups.ref_logprobs_NC is not None and groups.rounds == 1:
    reference = groups.ref_logprobs_NC  # the same rows, hence the same trim
  else:
    reference = device_logprobs(run, ref_params, t)
  if run.cfg.loss.old_logprobs == "sampler":
    old = rollout.policy_logprobs
  elif run.detached_old:
    old = jnp.zeros(shape, jnp.float32)  # unused: stop_gradient(logp)
  else:
    old = device_logprobs(run, params, t)
  return StepLogprobs(reference, old, t)


# ---- stage 5: policy updates ----------------------------------------------------


def update_batch(run: RLRun, batch: StepBatch, adv: Advantages, logprobs: StepLogprobs
                 ) -> dict[str, jax.Array]:
  """The update function's batch dict (see rlx/train/steps.py), trimmed like
  the log-probs (token-level advantages too)."""
  rollout = logprobs.trimmed.rollout
  c = rollout.completion_mask.shape[1]
  return dict(
      tokens=rollout.tokens, attn_mask=rollout.mask,
      loss_mask=(rollout.completion_mask & batch.valid_N[:, None]).astype(jnp.float32),
      adv=adv.values if adv.values.ndim == 1 else adv.values[:, :c],
      old_logp=logprobs.old_NC, sample_logp=rollout.sample_logprobs,
      ref_logp=logprobs.reference_NC, correct=batch.correct_N,
      group=run.group_ids_N,
      lengths=rollout.completion_lengths.astype(jnp.int32))


@dataclasses.dataclass
class UpdateResult:
  metrics: dict[str, float]  # loss/* averaged over the step's updates
  seconds: float


def run_updates(run: RLRun, state: steps.TrainState, batch: dict[str, jax.Array],
                key: jax.Array, group_size: int = 1) -> tuple[steps.TrainState, UpdateResult]:
  """config.train.epochs passes over the batch in config.train.minibatches
  minibatches (rows in order in the first epoch, permuted after). group_size:
  the batch's rows are groups of that many sharing their prompt
  (`TrimmedRollout.group_size`); so are the first epoch's minibatches when
  their size is a multiple of it."""
  t = time.time()
  cfg, n = run.cfg, run.num_completions
  rows = n // cfg.train.minibatches
  if cfg.train.packing:  # each minibatch is packed on its own
    completion_N = np.asarray(run.place.fetch(batch["lengths"]))
    prompt_N = np.asarray(run.place.fetch(jnp.sum(batch["attn_mask"], 1, dtype=jnp.int32)))
    prompt_N = prompt_N - completion_N
    c = batch["loss_mask"].shape[1]
    trim = layout.Trim(batch["tokens"].shape[1] - c, c)
  metrics = []
  for epoch in range(cfg.train.epochs):
    order = (np.arange(n) if epoch == 0 else
             np.asarray(jax.random.permutation(jax.random.fold_in(key, 1000 + epoch), n)))
    for i in range(cfg.train.minibatches):
      minibatch, idx = batch, order[i * rows:(i + 1) * rows]
      if cfg.train.minibatches > 1 or epoch:
        minibatch = run.place.take_rows(batch, idx)
      if cfg.train.packing:
        minibatch = {**minibatch, **packing(run, prompt_N[idx], completion_N[idx], trim)}
      shared = group_size if epoch == 0 and rows % group_size == 0 else 1
      state, m = run.fns.update(state, minibatch, group_size=shared)
      metrics.append(m)
  # Replicated scalars: averaged on the host (no extra device computation).
  mean = {k: float(np.mean([np.asarray(m[k]) for m in metrics])) for k in metrics[0]}
  mean = {k if k.startswith("loss") else f"loss/{k}": v for k, v in mean.items()}
  return state, UpdateResult(mean, time.time() - t)


def synced_reference(run: RLRun, step: int, state: steps.TrainState, ref_params: Any) -> Any:
  """The reference after `step`: a copy of the policy every config.ref.sync_every steps."""
  if run.sync_ref and (step + 1) % run.cfg.ref.sync_every == 0:
    return jax.tree.map(jnp.copy, state.params)
  return ref_params


# ---- the loop -------------------------------------------------------------------


def train_rl(cfg, workdir: str, *, init_checkpoint: str | None = None) -> dict[str, float]:
  """Runs (or resumes) RL in `workdir`. Returns the last metrics row."""
  os.makedirs(workdir, exist_ok=True)
  main = jax.process_index() == 0
  run, state, ref_params = setup_run(cfg, workdir, init_checkpoint)
  ckpt = Checkpointer(os.path.join(workdir, "checkpoints"), keep=cfg.train.keep_checkpoints)
  start, state, ref_params = restore(run, ckpt, state, ref_params)
  writer = MetricsWriter(workdir, enabled=main)
  writer.truncate_after(start if start > 0 else -1)  # rows after the checkpoint are redone
  progress = None
  if main and cfg.train.progress:
    from tqdm.auto import tqdm
    progress = tqdm(total=cfg.train.steps, initial=start, desc="rl", dynamic_ncols=True)
  out = Outputs(writer, ckpt, progress)
  last: dict[str, float] = {}
  t_run = time.time()
  with _Stop() as stop:  # installed first: a SIGTERM from here on saves and exits cleanly
    if start == 0 and cfg.train.eval_every:  # the initial policy: the baseline RL must beat
      initial = writer.write(0, {**run.data_metrics, **evaluate(run, state.params)})
      out.say(eval_line(0, initial, run.scorer.names))
    for step in range(start, cfg.train.steps):
      step_start = time.time()
      key = jax.random.fold_in(run.base_key, step)
      groups = collect_groups(run, state.params, ref_params, key, step)
      batch = build_batch(run, groups)
      adv = compute_advantages(run, batch)
      logprobs = reference_and_old_logprobs(run, batch, groups, state.params, ref_params)
      state, updates = run_updates(run, state, update_batch(run, batch, adv, logprobs), key,
                                   logprobs.trimmed.group_size)
      ref_params = synced_reference(run, step, state, ref_params)
      metrics = step_metrics(run, groups, batch, adv, updates, step_start)
      last = log_eval_checkpoint(run, out, step, metrics, state, ref_params, stop) or last
      if stop.requested:
        break
  finish(run, workdir, out, state, stop.requested, time.time() - t_run)
  return last
