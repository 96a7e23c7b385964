"""The RL loop: sample -> score -> filter -> advantages -> ref log-probs -> updates.

Each stage is a pure function chosen by the config; this file only wires them
together, handles checkpoints and writes metrics. Reward functions run on the
host in threads while the device computes reference log-probs.
"""
from __future__ import annotations

import logging
import os
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
from rlx.train.scoring import Scorer, build_rewards


class _Stop:
  """SIGTERM/SIGINT: finish the current step, save, exit."""

  def __init__(self):
    self.requested = False
    self._old = {}

  def __enter__(self):
    for s in (signal.SIGTERM,):
      try:
        self._old[s] = signal.signal(s, self._handle)
      except ValueError:  # not in the main thread
        pass
    return self

  def _handle(self, signum, frame):
    logging.warning("Signal %d: saving a checkpoint and exiting after this step.", signum)
    self.requested = True

  def __exit__(self, *a):
    for s, h in self._old.items():
      signal.signal(s, h)


def _repeat_columns(rows: dict[str, list], g: int) -> dict[str, list]:
  return {k: [v for v in vals for _ in range(g)] for k, vals in rows.items()}


def _settings(cfg, *, eval_mode: bool, tokenizer) -> sampling.SamplingSettings:
  s = cfg.sampling
  stop = (tuple(int(t) for t in np.atleast_1d(tokenizer.eos_token_id))
          if tokenizer.eos_token_id is not None and not s.ignore_eos else ())
  if eval_mode:
    greedy = cfg.eval.temperature <= 0
    return sampling.SamplingSettings(
        temperature=1.0 if greedy else cfg.eval.temperature, greedy=greedy, top_k=0, top_p=1.0,
        min_p=0.0, max_new_tokens=cfg.eval.max_new_tokens if cfg.eval.max_new_tokens > 0 else s.max_new_tokens,
        group_size=1, stop_token_ids=stop, pad_token_id=int(tokenizer.pad_token_id))
  return sampling.SamplingSettings(
      temperature=s.temperature, greedy=False, top_k=s.top_k, top_p=s.top_p, min_p=s.min_p,
      max_new_tokens=s.max_new_tokens, group_size=s.group_size, stop_token_ids=stop,
      pad_token_id=int(tokenizer.pad_token_id))


def _stats(x: np.ndarray) -> tuple[float, float]:
  x = x[np.isfinite(x)]
  return (float(x.mean()), float(x.std())) if x.size else (float("nan"), float("nan"))


def evaluate(cfg, policy_graphdef, params, tokenizer, scorer: Scorer, rows: list[dict],
             sample_fn, key) -> dict[str, float]:
  """Mean held-out rewards (greedy unless config.eval.temperature > 0)."""
  bp = cfg.eval.batch_prompts
  out = {n: [] for n in scorer.names}
  lengths = []
  for start in range(0, len(rows), bp):
    chunk = rows[start:start + bp]
    n_real = len(chunk)
    chunk = chunk + [chunk[-1]] * (bp - n_real)
    prompts = [r["prompt"] for r in chunk]
    tok, mask = tokenize_prompts(tokenizer, prompts, cfg.data.max_prompt_len)
    ro = sample_fn(params, jnp.asarray(tok), jnp.asarray(mask), jax.random.fold_in(key, start))
    texts = sampling.decode_completions(tokenizer, ro)[:n_real]
    cols = {k: [r.get(k) for r in chunk[:n_real]] for k in chunk[0] if k not in ("prompt",)}
    r, _ = scorer(prompts[:n_real], texts, cols)
    for j, n in enumerate(scorer.names):
      out[n].append(r[:, j])
    lengths.append(np.asarray(ro.completion_lengths)[:n_real])
  m = {f"eval/{n}": float(np.nanmean(np.concatenate(v))) for n, v in out.items()}
  m["eval/length"] = float(np.concatenate(lengths).mean())
  return m


def train_rl(cfg, workdir: str, *, init_checkpoint: str | None = None) -> dict[str, float]:
  """Runs (or resumes) RL in `workdir`. Returns the last metrics row."""
  os.makedirs(workdir, exist_ok=True)
  main = jax.process_index() == 0
  policy = common.load_policy(cfg, workdir, checkpoint=init_checkpoint)
  tok, graphdef = policy.tokenizer, policy.graphdef
  B, G = cfg.train.batch_prompts, cfg.sampling.group_size
  N, P, C = B * G, cfg.data.max_prompt_len, cfg.sampling.max_new_tokens
  updates_per_step = cfg.train.epochs * cfg.train.minibatches
  tx = make_optimizer(cfg.optim, cfg.train.steps * updates_per_step)

  # Reference model.
  if cfg.ref.source == "checkpoint":
    _, _, ref_params = hf_io.load_hf(cfg.ref.checkpoint, dtype=policy.cfg.dtype,
                                     param_dtype=policy.cfg.param_dtype)
  elif cfg.ref.source == "initial":
    ref_params = jax.tree.map(jnp.copy, policy.params)
  else:
    ref_params = None

  state = steps.TrainState(step=jnp.zeros((), jnp.int32), params=policy.params,
                           opt_state=tx.init(policy.params), skipped=jnp.zeros((), jnp.int32))
  specs = build_rewards(cfg.rewards)
  scorer = Scorer(specs, threads=cfg.reward_threads, errors=cfg.reward_errors)
  weights = jnp.asarray(scorer.weights)

  train_rows = common.load_rows(cfg, "train", cfg.data.num_train)
  eval_rows = common.load_rows(cfg, "eval", cfg.data.num_eval)
  it = make_prompt_iterator(train_rows, batch_prompts=B, seed=cfg.seed, shuffle=cfg.data.shuffle)

  ckpt = Checkpointer(os.path.join(workdir, "checkpoints"), keep=cfg.train.keep_checkpoints)
  start = 0
  sync_ref = cfg.ref.source != "none" and cfg.ref.sync_every > 0
  if ckpt.latest_step() is not None:
    start = ckpt.latest_step()
    target = {"train": state, "ref": ref_params} if sync_ref else {"train": state}
    restored, data_state, _ = ckpt.restore(start, target)
    state = restored["train"]
    if sync_ref:
      ref_params = restored["ref"]
    it.set_state(data_state)
    logging.info("Resumed from step %d in %s", start, workdir)
  writer = MetricsWriter(workdir, enabled=main)
  writer.truncate_after(start)

  sample_settings = _settings(cfg, eval_mode=False, tokenizer=tok)
  eval_settings = _settings(cfg, eval_mode=True, tokenizer=tok)
  sample_fn = lambda p, t, m, k: sampling.sample(graphdef, p, t, m, k, sample_settings)
  eval_fn = lambda p, t, m, k: sampling.sample(graphdef, p, t, m, k, eval_settings)
  chunk = cfg.model.logprob_chunk
  logprobs_fn = steps.make_logprobs_fn(graphdef, P, cfg.sampling.temperature, chunk)
  old_mode = cfg.loss.old_logprobs
  if old_mode not in ("auto", "recompute", "sampler"):
    raise ValueError(f"config.loss.old_logprobs={old_mode!r}; valid: auto, recompute, sampler.")
  detached_old = old_mode == "auto" and updates_per_step == 1
  update_fn = steps.make_update_fn(graphdef, tx, cfg.loss.terms, prompt_len=P,
                                   temperature=cfg.sampling.temperature, chunk=chunk,
                                   detached_old=detached_old, max_len=C, num_groups=B)
  est_name, est_opts = cfg.advantage.estimator, dict(cfg.advantage.options)
  adv_lib.ESTIMATORS.get(est_name)  # fail early on an unknown name
  adv_fn = jax.jit(lambda inputs: adv_lib.compute_advantages(est_name, inputs, B, **est_opts))
  filt = None
  if cfg.filter.name != "none":
    filt_name, filt_opts = cfg.filter.name, dict(cfg.filter.options)
    adv_lib.FILTERS.get(filt_name)
    filt = jax.jit(lambda r, g, v: adv_lib.apply_filter(filt_name, adv_lib.AdvantageInputs(
        rewards_NK=r, group_ids_N=g, valid_N=v, weights_K=weights, reward_names=scorer.names),
        B, **filt_opts))
  correct_j = scorer.names.index(cfg.loss.correct_reward) if cfg.loss.correct_reward else -1
  if cfg.loss.correct_reward and correct_j < 0:
    raise ValueError(f"config.loss.correct_reward={cfg.loss.correct_reward!r} is not a reward; "
                     f"valid: {', '.join(scorer.names)}.")
  group_ids = jnp.repeat(jnp.arange(B, dtype=jnp.int32), G)
  base_key = jax.random.PRNGKey(cfg.seed)

  progress = None
  if main and cfg.train.progress:
    from tqdm.auto import tqdm
    progress = tqdm(total=cfg.train.steps, initial=start, desc="rl", dynamic_ncols=True)
  last: dict[str, float] = {}
  t_run = time.time()
  with _Stop() as stop:
    for step in range(start, cfg.train.steps):
      t0 = time.time()
      key = jax.random.fold_in(base_key, step)
      # ---- sample (+ dynamic-sampling top-up) ---------------------------------
      kept: list[dict] = []
      dropped: list[dict] = []
      rounds = 0
      t_sample = t_score = 0.0
      score_metrics: dict[str, float] = {}
      while True:
        rows = next(it)
        prompts = list(rows["prompt"])
        ptok, pmask = tokenize_prompts(tok, prompts, P)
        ts = time.time()
        ro = sample_fn(state.params, jnp.asarray(ptok), jnp.asarray(pmask),
                       jax.random.fold_in(key, rounds))
        texts = sampling.decode_completions(tok, ro)
        t_sample += time.time() - ts
        cols = _repeat_columns({k: v for k, v in rows.items() if k != "prompt"}, G)
        ts = time.time()
        futs = scorer.submit([p for p in prompts for _ in range(G)], texts, cols)
        if rounds == 0 and ref_params is not None and filt is None:
          # Overlap: the device computes reference log-probs while rewards run.
          full = jnp.concatenate([ro.prompt_tokens, ro.completion_tokens], 1)
          fmask = jnp.concatenate([ro.prompt_mask, ro.completion_mask], 1)
          ref_pending = logprobs_fn(ref_params, full, fmask)[0]
        rewards, rm = scorer.collect(futs)
        t_score += time.time() - ts
        for k, v in rm.items():
          score_metrics[k] = score_metrics.get(k, 0.0) + v
        ro_np = jax.tree.map(np.asarray, ro)
        if filt is None:
          keep_g = np.ones(B, bool)
        else:
          keep_n, _ = filt(jnp.asarray(rewards), group_ids, jnp.ones(N, bool))
          keep_g = np.asarray(keep_n).reshape(B, G).all(1)
        for b in range(B):
          sl = slice(b * G, (b + 1) * G)
          grp = dict(ro={k: getattr(ro_np, k)[sl] for k in _RO_FIELDS}, rewards=rewards[sl])
          (kept if keep_g[b] else dropped).append(grp)
        rounds += 1
        if filt is None or len(kept) >= B or rounds > cfg.filter.max_rounds:
          break
      valid_groups = min(len(kept), B)
      groups = (kept + dropped)[:B]
      batch_ro = {k: np.concatenate([g["ro"][k] for g in groups]) for k in _RO_FIELDS}
      rewards = np.concatenate([g["rewards"] for g in groups])
      valid = np.repeat(np.arange(B) < valid_groups, G)

      # ---- advantages ---------------------------------------------------------
      inputs = adv_lib.AdvantageInputs(
          rewards_NK=jnp.asarray(rewards), group_ids_N=group_ids, valid_N=jnp.asarray(valid),
          weights_K=weights, lengths_N=jnp.asarray(batch_ro["completion_lengths"], jnp.float32),
          reward_names=scorer.names)
      adv, adiag = adv_fn(inputs)

      tokens = jnp.asarray(np.concatenate([batch_ro["prompt_tokens"], batch_ro["completion_tokens"]], 1))
      attn = jnp.asarray(np.concatenate([batch_ro["prompt_mask"], batch_ro["completion_mask"]], 1))
      loss_mask = jnp.asarray(batch_ro["completion_mask"]) * jnp.asarray(valid)[:, None]
      if ref_params is not None:
        ref_logp = ref_pending if (rounds == 1 and filt is None) else logprobs_fn(ref_params, tokens, attn)[0]
      else:
        ref_logp = jnp.zeros(loss_mask.shape, jnp.float32)
      if old_mode == "sampler":
        old_logp = jnp.asarray(batch_ro["policy_logprobs"])
      elif detached_old:
        old_logp = jnp.zeros(loss_mask.shape, jnp.float32)
      else:
        old_logp = logprobs_fn(state.params, tokens, attn)[0]
      correct = (jnp.asarray(np.nan_to_num(rewards[:, correct_j], nan=-np.inf) >= cfg.loss.correct_threshold)
                 if correct_j >= 0 else jnp.zeros((N,), bool))
      batch = dict(tokens=tokens, attn_mask=attn, loss_mask=loss_mask.astype(jnp.float32),
                   adv=adv, old_logp=old_logp, sample_logp=jnp.asarray(batch_ro["sample_logprobs"]),
                   ref_logp=ref_logp, correct=correct, group=group_ids,
                   lengths=jnp.asarray(batch_ro["completion_lengths"], jnp.int32))

      # ---- updates ------------------------------------------------------------
      tu = time.time()
      mb = N // cfg.train.minibatches
      upd_metrics = []
      for epoch in range(cfg.train.epochs):
        order = (np.arange(N) if epoch == 0 else
                 np.asarray(jax.random.permutation(jax.random.fold_in(key, 1000 + epoch), N)))
        for i in range(cfg.train.minibatches):
          idx = order[i * mb:(i + 1) * mb]
          sub = jax.tree.map(lambda x: x[idx], batch) if cfg.train.minibatches > 1 or epoch else batch
          state, um = update_fn(state, sub)
          upd_metrics.append(um)
      um = jax.tree.map(lambda *xs: jnp.mean(jnp.stack(xs)), *upd_metrics)
      um = jax.device_get(um)
      t_update = time.time() - tu
      if sync_ref and (step + 1) % cfg.ref.sync_every == 0:
        ref_params = jax.tree.map(jnp.copy, state.params)

      # ---- metrics ------------------------------------------------------------
      m: dict[str, Any] = {}
      for j, name in enumerate(scorer.names):
        mu, sd = _stats(rewards[valid, j] if valid.any() else rewards[:, j])
        m[f"reward/{name}/mean"], m[f"reward/{name}/std"] = mu, sd
      m.update(score_metrics)
      lengths = batch_ro["completion_lengths"]
      m["completion/length_mean"] = float(lengths.mean())
      m["completion/length_max"] = float(lengths.max())
      m["completion/truncated"] = float(batch_ro["truncated"].mean())
      m["filter/kept_groups"] = float(valid_groups)
      m["filter/rounds"] = float(rounds)
      m.update(jax.device_get(adiag))
      m["loss"] = um
      m["time/sample_s"], m["time/score_s"], m["time/update_s"] = t_sample, t_score, t_update
      dt = time.time() - t0
      m["time/step_s"] = dt
      m["throughput/tokens_per_s"] = float(lengths.sum() * rounds) / max(t_sample, 1e-9)
      if cfg.train.eval_every and ((step + 1) % cfg.train.eval_every == 0 or step + 1 == cfg.train.steps):
        m.update(evaluate(cfg, graphdef, state.params, tok, scorer, eval_rows, eval_fn,
                          jax.random.fold_in(base_key, -1 % (2**31))))
      if (step + 1) % cfg.train.log_every == 0 or "eval/length" in str(m.keys()):
        last = writer.write(step + 1, m)
      if progress is not None:
        progress.update(1)
        progress.set_postfix({n[:12]: f"{m[f'reward/{n}/mean']:.3f}" for n in scorer.names}, refresh=False)
      done = step + 1 == cfg.train.steps
      if (cfg.train.ckpt_every and (step + 1) % cfg.train.ckpt_every == 0) or done or stop.requested:
        target = {"train": state, "ref": ref_params} if sync_ref else {"train": state}
        ckpt.save(step + 1, target, it.get_state(), {"step": step + 1})
      if stop.requested:
        break
  ckpt.close()
  if progress is not None:
    progress.close()
  scorer.close()
  writer.close()
  if main and not stop.requested:
    if cfg.train.export_hf:
      hf_io.save_hf(os.path.join(workdir, "hf"), policy.cfg, state.params, tokenizer=tok)
    rows = read_jsonl(writer.path)
    keys = [f"reward/{n}/mean" for n in scorer.names] + [f"eval/{n}" for n in scorer.names]
    plot_curves(rows, keys + ["completion/length_mean", "loss/kl/kl" if False else "loss/loss"],
                os.path.join(workdir, "rewards.png"), title=f"{cfg.advantage.estimator} on {cfg.data.task}")
  logging.info("RL finished in %.1f s", time.time() - t_run)
  return last


_RO_FIELDS = ("prompt_tokens", "prompt_mask", "completion_tokens", "completion_mask",
              "sample_logprobs", "policy_logprobs", "completion_lengths", "truncated")
