"""Supervised fine-tuning on (prompt, completion) pairs: the warm start for RL.

Built-in tasks supply demonstrations from their train split (a real-data
task's ground truth, e.g. bfcl's calls), corrupted at `config.sft.corrupt_rate`
so that the SFT policy is imperfect and RL has room to improve. The result is
written in Hugging Face layout to `workdir/hf`.
"""
from __future__ import annotations

import logging
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from rlx.data import make_sft_batch
from rlx.models import hf_io
from rlx.models.logprobs import token_logprobs
from rlx.train import common
from rlx.train.checkpoint import Checkpointer
from rlx.train.metrics import MetricsWriter, plot_curves, read_jsonl


def _sft_pairs(cfg, n: int, seed: int, tokenizer) -> tuple[list[str], list[str]]:
  task = common.task_or_none(cfg)
  if task is None:
    rows = common.load_rows(cfg, "train", n)
    if not rows or "completion" not in rows[0]:
      raise ValueError("SFT on a file needs a 'completion' field (map it with config.data.fields).")
    return [r["prompt"] for r in rows], [r["completion"] for r in rows]
  # The train split's rows whose prompts fit config.data.max_prompt_len (as in RL).
  rows = common.load_rows(cfg, "train", n, tokenizer=tokenizer)
  rng = np.random.default_rng(seed)
  comps = [task.corrupt(r["demo"], rng, cfg.sft.corrupt_rate, row=r) for r in rows]
  return [r["prompt"] for r in rows], comps


def train_sft(cfg, workdir: str) -> str:
  """Runs (or resumes) SFT in `workdir`; returns the HF checkpoint directory."""
  out_dir = os.path.join(workdir, "hf")
  if os.path.exists(os.path.join(out_dir, "config.json")):
    logging.info("SFT already finished: %s", out_dir)
    return out_dir
  os.makedirs(workdir, exist_ok=True)
  main = jax.process_index() == 0
  policy = common.load_policy(cfg, workdir)
  tok, graphdef = policy.tokenizer, policy.graphdef
  max_len = cfg.sft.max_len or (cfg.data.max_prompt_len + cfg.sampling.max_new_tokens)
  bs, steps = cfg.sft.batch_size, cfg.sft.steps
  sched = optax.warmup_cosine_decay_schedule(0.0, cfg.sft.lr, cfg.sft.warmup_steps,
                                             max(steps, cfg.sft.warmup_steps + 1), 0.1 * cfg.sft.lr)
  tx = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(sched, weight_decay=0.01))
  params, opt_state = policy.params, tx.init(policy.params)

  def loss_fn(p, tokens, mask, loss_mask):
    logp, _ = token_logprobs(graphdef, p, tokens, mask)
    return -(logp * loss_mask).sum() / jnp.maximum(loss_mask.sum(), 1.0)

  @jax.jit
  def update(p, o, tokens, mask, loss_mask):
    loss, g = jax.value_and_grad(loss_fn)(p, tokens, mask, loss_mask)
    u, o = tx.update(g, o, p)
    return optax.apply_updates(p, u), o, loss

  prompts, comps = _sft_pairs(cfg, min(cfg.data.num_train, steps * bs), cfg.seed, tok)
  ckpt = Checkpointer(os.path.join(workdir, "checkpoints"), keep=1)
  start = 0
  if ckpt.latest_step() is not None:
    start = ckpt.latest_step()
    (params, opt_state), _, _ = ckpt.restore(start, (params, opt_state))
  writer = MetricsWriter(workdir, enabled=main)
  writer.truncate_after(start)
  rng = np.random.default_rng(cfg.seed)
  orders = [rng.permutation(len(prompts)) for _ in range((steps * bs) // len(prompts) + 1)]
  order = np.concatenate(orders)
  progress = None
  if main and cfg.train.progress:
    from tqdm.auto import tqdm
    progress = tqdm(total=steps, initial=start, desc="sft", dynamic_ncols=True)
  t0 = time.time()
  for step in range(start, steps):
    idx = order[step * bs:(step + 1) * bs]
    b = make_sft_batch(tok, [prompts[i] for i in idx], [comps[i] for i in idx], max_len,
                       truncate=True)
    params, opt_state, loss = update(params, opt_state, jnp.asarray(b["tokens_BT"]),
                                     jnp.asarray(b["mask_BT"]), jnp.asarray(b["loss_mask_BT"], jnp.float32))
    if (step + 1) % 25 == 0 or step + 1 == steps:
      lv = float(loss)
      writer.write(step + 1, {"sft/loss": lv, "time/elapsed_s": time.time() - t0})
      if progress is not None:
        progress.set_postfix(loss=f"{lv:.3f}", refresh=False)
    if progress is not None:
      progress.update(1)
    if (step + 1) % 200 == 0 and step + 1 < steps:
      ckpt.save(step + 1, (params, opt_state))
  ckpt.close()
  if progress is not None:
    progress.close()
  if main:
    hf_io.save_hf(out_dir, policy.cfg, params, tokenizer=tok)
    plot_curves(read_jsonl(writer.path), ["sft/loss"], os.path.join(workdir, "sft_loss.png"))
  writer.close()
  logging.info("SFT finished in %.1f s -> %s", time.time() - t0, out_dir)
  return out_dir
