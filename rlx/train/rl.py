"""The RL loop: sample -> score -> filter -> advantages -> ref log-probs -> updates.

Each stage is a pure function chosen by the config; this file wires them
together, handles checkpoints and writes metrics. Reward functions run on the
host in threads while the device computes reference log-probs. Every jitted
function sees global (possibly sharded) arrays; each process feeds, decodes and
scores only its own rows (see rlx/train/placement.py).
"""
from __future__ import annotations

import logging
import os
import resource
import signal
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from rlx import advantages as adv_lib
from rlx import sampling
from rlx.data import make_prompt_iterator, tokenize_prompts
from rlx.models import hf_io
from rlx.train import common, steps
from rlx.train.checkpoint import Checkpointer
from rlx.train.metrics import MetricsWriter, plot_curves, read_jsonl
from rlx.train.optim import make_optimizer
from rlx.train.placement import Placement
from rlx.train.scoring import Scorer, build_rewards

_RO_FIELDS = ("prompt_tokens", "prompt_mask", "completion_tokens", "completion_mask",
              "sample_logprobs", "policy_logprobs", "completion_lengths", "truncated")

# `sampling.sample` under jit: its host-side prompt check reads the mask, which
# a multi-process (non process-local) global array does not allow; prompts from
# `tokenize_prompts` are left-padded by construction.
_sample = jax.jit(sampling.sample, static_argnames=("graphdef", "settings"))


class _Stop:
  """SIGTERM: finish the current step, save a checkpoint, exit."""

  def __init__(self):
    self.requested = False
    self._old = {}

  def __enter__(self):
    try:
      self._old[signal.SIGTERM] = signal.signal(signal.SIGTERM, self._handle)
    except ValueError:  # not in the main thread
      pass
    return self

  def _handle(self, signum, frame):
    del frame
    logging.warning("Signal %d: saving a checkpoint and exiting after this step.", signum)
    self.requested = True

  def __exit__(self, *a):
    for s, h in self._old.items():
      signal.signal(s, h)


def _settings(cfg, *, eval_mode: bool, tokenizer) -> sampling.SamplingSettings:
  s = cfg.sampling
  stop = (tuple(int(t) for t in np.atleast_1d(tokenizer.eos_token_id))
          if tokenizer.eos_token_id is not None and not s.ignore_eos else ())
  common_kw = dict(stop_token_ids=stop, pad_token_id=int(tokenizer.pad_token_id or 0))
  if eval_mode:
    greedy = cfg.eval.temperature <= 0
    max_new = cfg.eval.max_new_tokens if cfg.eval.max_new_tokens > 0 else s.max_new_tokens
    return sampling.SamplingSettings(
        temperature=1.0 if greedy else cfg.eval.temperature, greedy=greedy,
        max_new_tokens=max_new, group_size=1, **common_kw)
  return sampling.SamplingSettings(
      temperature=s.temperature, top_k=s.top_k, top_p=s.top_p, min_p=s.min_p,
      max_new_tokens=s.max_new_tokens, group_size=s.group_size, **common_kw)


def _columns(rows: dict[str, Any], g: int) -> dict[str, list]:
  """Reward columns (everything but the prompt), each repeated for the group."""
  return {k: [v for v in list(vals) for _ in range(g)] for k, vals in rows.items() if k != "prompt"}


def evaluate(cfg, graphdef, params, tokenizer, scorer: Scorer, rows: list[dict], place: Placement,
             settings, key) -> dict[str, float]:
  """Mean held-out rewards over `rows` (greedy unless config.eval.temperature > 0)."""
  eb = cfg.eval.batch_prompts
  rewards, lengths = [], []
  for start in range(0, len(rows), eb):
    chunk = rows[start:start + eb]
    n_real = len(chunk)
    chunk = chunk + [chunk[-1]] * (eb - n_real)  # static shape: pad with repeats
    mine = place.local_rows(eb)
    local = chunk[mine]
    tok, mask = tokenize_prompts(tokenizer, [r["prompt"] for r in local], cfg.data.max_prompt_len)
    ro = _sample(graphdef, params, *place.to_global((tok, mask), eb),
                         jax.random.fold_in(key, start), settings)
    ro = place.to_local(ro)
    texts = sampling.decode_completions(tokenizer, ro)
    cols = {k: [r.get(k) for r in local] for k in local[0] if k != "prompt"}
    r, _ = scorer([r["prompt"] for r in local], texts, cols)
    real = np.arange(mine.start, mine.stop) < n_real
    rewards.append(place.gather(np.where(real[:, None], r, np.nan)))
    lengths.append(place.gather(np.where(real, ro.completion_lengths, -1)))
  r = np.concatenate(rewards)
  ln = np.concatenate(lengths)
  m = {f"eval/{n}": float(np.nanmean(r[:, j])) for j, n in enumerate(scorer.names)}
  m["eval/completion_length"] = float(ln[ln >= 0].mean())
  return m


def _reward_stats(rewards: np.ndarray, valid: np.ndarray, names) -> dict[str, float]:
  m = {}
  for j, name in enumerate(names):
    x = rewards[valid, j] if valid.any() else rewards[:, j]
    x = x[np.isfinite(x)]
    m[f"reward/{name}/mean"] = float(x.mean()) if x.size else float("nan")
    m[f"reward/{name}/std"] = float(x.std()) if x.size else float("nan")
  return m


def train_rl(cfg, workdir: str, *, init_checkpoint: str | None = None) -> dict[str, float]:
  """Runs (or resumes) RL in `workdir`. Returns the last metrics row."""
  os.makedirs(workdir, exist_ok=True)
  main = jax.process_index() == 0
  place = Placement(cfg)
  B, G = cfg.train.batch_prompts, cfg.sampling.group_size
  N, P, C = B * G, cfg.data.max_prompt_len, cfg.sampling.max_new_tokens
  place.check_batch(B, "config.train.batch_prompts")
  place.check_batch(cfg.eval.batch_prompts, "config.eval.batch_prompts")
  if cfg.train.minibatches > 1:
    place.check_batch(N // cfg.train.minibatches, "completions per minibatch (config.train."
                      "batch_prompts * sampling.group_size / train.minibatches)")
  mine_p = place.local_rows(B)  # this process's prompts of the global batch
  Bl = mine_p.stop - mine_p.start

  from rlx.parallel import models as aux_models
  aux_models.set_reward_model_mesh(
      aux_models.resolve_reward_model_mesh(cfg.mesh.reward_models, place.mesh, place.rules),
      place.rules)
  policy = common.load_policy(cfg, workdir, checkpoint=init_checkpoint)
  tok, graphdef = policy.tokenizer, policy.graphdef
  updates_per_step = cfg.train.epochs * cfg.train.minibatches
  tx = make_optimizer(cfg.optim, cfg.train.steps * updates_per_step)
  p_sh = place.param_shardings(policy.params)
  params = place.put_params(policy.params, p_sh)
  if cfg.ref.source == "checkpoint":
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
  state_sh = jax.tree.map(lambda x: x.sharding, state)

  scorer = Scorer(build_rewards(cfg.rewards), threads=cfg.reward_threads, errors=cfg.reward_errors)
  weights = jnp.asarray(scorer.weights)
  data_m: dict[str, float] = {}  # row counts, written with step 0
  train_rows = common.load_rows(cfg, "train", cfg.data.num_train, tokenizer=tok, stats=data_m)
  eval_rows = common.load_rows(cfg, "eval", cfg.data.num_eval, tokenizer=tok, stats=data_m)
  # Every process reads the whole global batch (prompt rows are small) and
  # keeps its rows `mine_p`: the batch's row order, hence the samples, and the
  # iterator state do not depend on the number of processes.
  it = make_prompt_iterator(train_rows, batch_prompts=B, seed=cfg.seed, shuffle=cfg.data.shuffle,
                            process_index=0, process_count=1)

  ckpt = Checkpointer(os.path.join(workdir, "checkpoints"), keep=cfg.train.keep_checkpoints)
  sync_ref = ref_params is not None and cfg.ref.sync_every > 0
  start = 0
  if ckpt.latest_step() is not None:
    start = ckpt.latest_step()
    target = {"train": state, "ref": ref_params} if sync_ref else {"train": state}
    restored, data_state, _ = ckpt.restore(start, target)
    state = restored["train"]
    ref_params = restored["ref"] if sync_ref else ref_params
    it.set_state(data_state)
    logging.info("Resumed from step %d in %s", start, workdir)
  writer = MetricsWriter(workdir, enabled=main)
  writer.truncate_after(start if start > 0 else -1)  # rows after the checkpoint are redone

  # ---- the jitted stages ------------------------------------------------------
  sample_settings = _settings(cfg, eval_mode=False, tokenizer=tok)
  eval_settings = _settings(cfg, eval_mode=True, tokenizer=tok)
  chunk = cfg.model.logprob_chunk
  logprobs_fn = steps.make_logprobs_fn(graphdef, P, cfg.sampling.temperature, chunk)
  old_mode = cfg.loss.old_logprobs
  if old_mode not in ("auto", "recompute", "sampler"):
    raise ValueError(f"config.loss.old_logprobs={old_mode!r}; valid: auto, recompute, sampler.")
  detached_old = old_mode == "auto" and updates_per_step == 1
  update_fn = steps.make_update_fn(graphdef, tx, cfg.loss.terms, prompt_len=P,
                                   temperature=cfg.sampling.temperature, chunk=chunk,
                                   detached_old=detached_old, max_len=C, num_groups=B,
                                   state_shardings=state_sh,
                                   remat=False if cfg.model.remat == "none" else cfg.model.remat)
  est_name, est_opts = cfg.advantage.estimator, dict(cfg.advantage.options)

  def make_inputs(rewards, valid, lengths=None):
    return adv_lib.AdvantageInputs(
        rewards_NK=rewards, group_ids_N=jnp.repeat(jnp.arange(B, dtype=jnp.int32), G),
        valid_N=valid, weights_K=weights, lengths_N=lengths, reward_names=scorer.names)

  adv_fn = jax.jit(lambda r, v, ln: adv_lib.compute_advantages(
      est_name, make_inputs(r, v, ln), B, **est_opts))
  filt_fn = None
  if cfg.filter.name != "none":
    filt_name, filt_opts = cfg.filter.name, dict(cfg.filter.options)
    filt_fn = jax.jit(lambda r, v: adv_lib.apply_filter(filt_name, make_inputs(r, v), B, **filt_opts)[0])
  correct_j = scorer.names.index(cfg.loss.correct_reward) if cfg.loss.correct_reward else -1
  base_key = jax.random.PRNGKey(cfg.seed)
  eval_key = jax.random.fold_in(base_key, 2**31 - 1)  # the same held-out draws at every eval
  mine_n = slice(mine_p.start * G, mine_p.stop * G)

  progress = None
  if main and cfg.train.progress:
    from tqdm.auto import tqdm
    progress = tqdm(total=cfg.train.steps, initial=start, desc="rl", dynamic_ncols=True)
  last: dict[str, float] = {}
  t_run = time.time()
  with _Stop() as stop:  # installed first: a SIGTERM from here on saves and exits cleanly
    if start == 0 and cfg.train.eval_every:
      # Held-out rewards of the initial policy (step 0): the baseline RL must beat.
      writer.write(0, {**data_m, **evaluate(cfg, graphdef, state.params, tok, scorer, eval_rows,
                                            place, eval_settings, eval_key)})
    for step in range(start, cfg.train.steps):
      t0 = time.time()
      key = jax.random.fold_in(base_key, step)
      # ---- sample and score (with dynamic-sampling top-up) ----------------------
      kept, dropped, rounds = [], [], 0
      t_sample = t_score = 0.0
      score_m: dict[str, float] = {}
      ref_pending = None
      while True:
        rows = {k: v[mine_p] for k, v in next(it).items()}
        prompts = list(rows["prompt"])
        ptok, pmask = tokenize_prompts(tok, prompts, P)
        ts = time.time()
        ro = _sample(graphdef, state.params, *place.to_global((ptok, pmask), B),
                             jax.random.fold_in(key, rounds), sample_settings)
        if ref_params is not None and filt_fn is None:
          # Dispatched now, computed while the host scores.
          ref_pending = logprobs_fn(
              ref_params, jnp.concatenate([ro.prompt_tokens, ro.completion_tokens], 1),
              jnp.concatenate([ro.prompt_mask, ro.completion_mask], 1))[0]
        ro_np = place.to_local(ro)
        texts = sampling.decode_completions(tok, ro_np)
        t_sample += time.time() - ts
        ts = time.time()
        rewards, rm = scorer([p for p in prompts for _ in range(G)], texts, _columns(rows, G))
        t_score += time.time() - ts
        for k, v in rm.items():
          score_m[k] = score_m.get(k, 0.0) + v
        if filt_fn is None:
          keep_g = np.ones(Bl, bool)
        else:
          keep_n = place.to_local(filt_fn(place.to_global(rewards, N), jnp.ones((N,), bool)))
          keep_g = np.asarray(keep_n).reshape(Bl, G).all(1)
        for b in range(Bl):
          sl = slice(b * G, (b + 1) * G)
          grp = ({k: getattr(ro_np, k)[sl] for k in _RO_FIELDS}, rewards[sl])
          (kept if keep_g[b] else dropped).append(grp)
        rounds += 1
        short = place.gather(np.asarray([len(kept) < Bl]))
        if filt_fn is None or not short.any() or rounds > cfg.filter.max_rounds:
          break
      if place.multi:  # scorer counts of all processes
        names = sorted(score_m)
        tot = place.sum_over_processes(np.asarray([score_m[k] for k in names], np.float32))
        score_m = dict(zip(names, tot.tolist()))
      n_kept = min(len(kept), Bl)
      groups = (kept + dropped)[:Bl]
      local = {k: np.concatenate([g[0][k] for g in groups]) for k in _RO_FIELDS}
      local["rewards"] = np.concatenate([g[1] for g in groups])
      local["valid"] = np.repeat(np.arange(Bl) < n_kept, G)
      local["correct"] = (np.nan_to_num(local["rewards"][:, correct_j], nan=-np.inf)
                          >= cfg.loss.correct_threshold) if correct_j >= 0 else np.zeros(len(local["valid"]), bool)
      glob = place.to_global(local, N)

      # ---- advantages, reference and old log-probs ------------------------------
      adv, adiag = adv_fn(glob["rewards"], glob["valid"], glob["completion_lengths"].astype(jnp.float32))
      tokens = jnp.concatenate([glob["prompt_tokens"], glob["completion_tokens"]], 1)
      attn = jnp.concatenate([glob["prompt_mask"], glob["completion_mask"]], 1)
      loss_mask = (glob["completion_mask"] & glob["valid"][:, None]).astype(jnp.float32)
      if ref_params is None:
        ref_logp = jnp.zeros(loss_mask.shape, jnp.float32)
      elif ref_pending is not None and rounds == 1:
        ref_logp = ref_pending
      else:
        ref_logp = logprobs_fn(ref_params, tokens, attn)[0]
      if old_mode == "sampler":
        old_logp = glob["policy_logprobs"]
      elif detached_old:
        old_logp = jnp.zeros(loss_mask.shape, jnp.float32)  # unused: stop_gradient(logp)
      else:
        old_logp = logprobs_fn(state.params, tokens, attn)[0]
      batch = dict(tokens=tokens, attn_mask=attn, loss_mask=loss_mask, adv=adv, old_logp=old_logp,
                   sample_logp=glob["sample_logprobs"], ref_logp=ref_logp, correct=glob["correct"],
                   group=jnp.repeat(jnp.arange(B, dtype=jnp.int32), G),
                   lengths=glob["completion_lengths"].astype(jnp.int32))

      # ---- updates ------------------------------------------------------------
      tu = time.time()
      mb = N // cfg.train.minibatches
      upd = []
      for epoch in range(cfg.train.epochs):
        order = (np.arange(N) if epoch == 0 else
                 np.asarray(jax.random.permutation(jax.random.fold_in(key, 1000 + epoch), N)))
        for i in range(cfg.train.minibatches):
          sub = batch
          if cfg.train.minibatches > 1 or epoch:
            sub = place.take_rows(batch, order[i * mb:(i + 1) * mb])
          state, um = update_fn(state, sub)
          upd.append(um)
      # Replicated scalars: averaged on the host (no extra device computation).
      um = {k: float(np.mean([np.asarray(u[k]) for u in upd])) for k in upd[0]}
      t_update = time.time() - tu
      if sync_ref and (step + 1) % cfg.ref.sync_every == 0:
        ref_params = jax.tree.map(jnp.copy, state.params)

      # ---- metrics, eval, checkpoint ---------------------------------------------
      all_rewards = place.gather(local["rewards"])
      all_valid = place.gather(local["valid"])
      lengths = place.gather(local["completion_lengths"])
      m: dict[str, Any] = _reward_stats(all_rewards, all_valid, scorer.names)
      m.update(score_m)
      m.update(jax.device_get(adiag))
      m.update({f"loss/{k}" if not k.startswith("loss") else k: v for k, v in um.items()})
      m["completion/length_mean"] = float(lengths.mean())
      m["completion/length_max"] = float(lengths.max())
      m["completion/truncated"] = float(place.gather(local["truncated"]).mean())
      m["filter/kept_groups"] = float(all_valid.sum() // G)
      m["filter/rounds"] = float(rounds)
      m["time/sample_s"], m["time/score_s"], m["time/update_s"] = t_sample, t_score, t_update
      m["time/step_s"] = time.time() - t0
      m["memory/peak_rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
      m["throughput/tokens_per_s"] = float(lengths.sum() * rounds) / max(t_sample, 1e-9)
      done = step + 1 == cfg.train.steps
      if cfg.train.eval_every and ((step + 1) % cfg.train.eval_every == 0 or done):
        m.update(evaluate(cfg, graphdef, state.params, tok, scorer, eval_rows, place,
                          eval_settings, eval_key))
      if (step + 1) % cfg.train.log_every == 0 or done or any(k.startswith("eval/") for k in m):
        last = writer.write(step + 1, m)
      if progress is not None:
        progress.update(1)
        progress.set_postfix({n[:12]: f"{m[f'reward/{n}/mean']:.3f}" for n in scorer.names},
                             refresh=False)
      if (cfg.train.ckpt_every and (step + 1) % cfg.train.ckpt_every == 0) or done or stop.requested:
        target = {"train": state, "ref": ref_params} if sync_ref else {"train": state}
        ckpt.save(step + 1, target, it.get_state(), {"step": step + 1})
      if stop.requested:
        break
  ckpt.close()
  scorer.close()
  if progress is not None:
    progress.close()
  writer.close()
  export = cfg.train.export_hf and not stop.requested
  # Every process takes part in gathering the sharded params; process 0 writes.
  host_params = place.fetch(state.params) if export else None
  if main and not stop.requested:
    if export:
      hf_io.save_hf(os.path.join(workdir, "hf"), policy.cfg, host_params, tokenizer=tok)
    keys = ([f"reward/{n}/mean" for n in scorer.names] + [f"eval/{n}" for n in scorer.names]
            + ["completion/length_mean", "loss"])
    plot_curves(read_jsonl(writer.path), keys, os.path.join(workdir, "rewards.png"),
                title=f"{cfg.advantage.estimator} on {cfg.data.task}")
  if stop.requested:
    logging.warning("RL stopped by a signal after %.1f s; the checkpoint in %s resumes it.",
                    time.time() - t_run, workdir)
  else:
    logging.info("RL finished in %.1f s", time.time() - t_run)
  return last
