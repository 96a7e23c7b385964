"""Reward-model training on preference pairs (METHODS.md section 5).

    python -m rlx.main --config=configs/reward_model.py:path=prefs.jsonl --workdir=runs/rm

Data: rows {prompt, chosen, rejected[, tie][, margin]} from a local file
(`config.data.task = "file"`, `data.path`, field names mapped by `data.fields`)
or a synthetic rule (`data.task` = 'pref_count' | 'pref_arith', see
rlx.data.preferences). The held-out split is `rm.eval_path` if set, else
`data.num_eval` rows (at most half) drawn at random with `seed`.

Model: a scalar `*ForSequenceClassification` head on a decoder:
`model.init = "checkpoint"` starts from an HF causal LM (new N(0, 0.02) score
head) or an HF reward model (kept as is); `"random"` builds `model.arch` with
the character tokenizer.

Loss (`rm.loss`): bradley_terry  -log sigmoid(r_w - r_l - m) + c (r_w + r_l)^2
(m = rm.margin + the row's `margin`, c = rm.center_coef; tie rows are dropped),
or soli_tie (tie rows get -log sigmoid(r1 - r2 - m_t) - log sigmoid(r2 - r1 - m_t),
m_t = rm.tie_margin; centring is added when c > 0).

Metrics (metrics.jsonl, TensorBoard, console): rm/loss, rm/accuracy (train
batch), eval/accuracy (held-out strict pairs, r_chosen > r_rejected),
eval/loss, eval/tie_abs_gap. The result is exported to `workdir/hf` in HF
layout with the tokenizer and `rlx_reward_model.json` (template, max_len), so
`rlx.rewards.reward_models.make_reward_model_fn(workdir + "/hf")` and
`transformers.AutoModelForSequenceClassification` both load it.
"""
from __future__ import annotations

import json
import logging
import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from rlx import models
from rlx.losses.reward_model import RM_LOSSES
from rlx.models import hf_io
from rlx.models import reward_model as rm_lib
from rlx.rewards import reward_models as rms
from rlx.train import common
from rlx.train.checkpoint import Checkpointer
from rlx.train.metrics import MetricsWriter, plot_curves, read_jsonl
from rlx.train.optim import make_optimizer

# Settings of the `rm` config section (configs/base.py), with their defaults.
RM_DEFAULTS: dict[str, Any] = dict(
    loss="bradley_terry",  # bradley_terry | soli_tie
    margin=0.0,  # BT margin (added to a row's `margin` column)
    center_coef=0.0,  # reward centring c (r_w + r_l)^2; 0.01 when used
    tie_margin=0.0,  # soli_tie: margin of the tie term
    max_len=128,  # tokens per prompt+response row (longer rows keep their last tokens)
    template="concat",  # concat | chat | format string with {prompt} and {completion}
    append_eos=True,  # end every row with <eos> (the score is read at the last token)
    eval_path="",  # held-out preference file ("" -> split from the training data)
)
TRAIN_LOSSES = ("bradley_terry", "soli_tie")
PREFERENCE_TASKS = {"pref_count": "count", "pref_arith": "arith"}
RESULT_FILE = "rm_result.json"


def rm_settings(cfg) -> dict[str, Any]:
  """RM_DEFAULTS updated with config.rm (if the section exists)."""
  out = dict(RM_DEFAULTS)
  section = cfg.get("rm", None) if hasattr(cfg, "get") else None
  for k, v in dict(section or {}).items():
    if k not in RM_DEFAULTS:
      raise ValueError(f"Unknown config key 'rm.{k}'. Valid keys in rm: "
                       f"{', '.join(sorted(RM_DEFAULTS))}.")
    out[k] = v
  if out["loss"] not in TRAIN_LOSSES:
    raise ValueError(f"config.rm.loss={out['loss']!r}; valid choices: {', '.join(TRAIN_LOSSES)} "
                     f"(other reward-model losses in RM_LOSSES: {', '.join(RM_LOSSES.names())} "
                     "need their own data layout).")
  rms.check_template(out["template"])
  return out


# ---------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------

_PAIR_TYPES = {"prompt": (str, list), "chosen": (str, list), "rejected": (str, list)}


def _file_rows(path: str, fields: dict[str, str]) -> list[dict[str, Any]]:
  from rlx.data import load_rows
  mapping = {k: k for k in ("prompt", "chosen", "rejected")}
  mapping.update(fields)
  return load_rows(path, fields=mapping, types=_PAIR_TYPES,
                   required=("prompt", "chosen", "rejected"), keep_unmapped=True)


def load_preference_rows(cfg, rm: dict[str, Any]) -> tuple[list[dict], list[dict]]:
  """(train rows, held-out rows) of {prompt, chosen, rejected, tie, margin}."""
  task = cfg.data.task
  if task in PREFERENCE_TASKS:
    from rlx.data.preferences import make_preference_rows
    rows = make_preference_rows(PREFERENCE_TASKS[task], cfg.data.num_train + cfg.data.num_eval,
                                seed=cfg.seed)
  elif task == "file":
    if not cfg.data.path:
      raise ValueError("config.data.task='file' needs config.data.path (a preference file "
                       "with prompt, chosen, rejected[, tie] fields).")
    rows = _file_rows(cfg.data.path, dict(cfg.data.fields or {}))
  else:
    raise ValueError(f"Reward-model training: config.data.task={task!r}; valid choices: file, "
                     f"{', '.join(PREFERENCE_TASKS)}.")
  for r in rows:
    r["tie"] = bool(r.get("tie") or False)
    r["margin"] = float(r.get("margin") or 0.0)
  if rm["eval_path"]:
    return rows, [dict(r, tie=bool(r.get("tie") or False), margin=float(r.get("margin") or 0.0))
                  for r in _file_rows(rm["eval_path"], dict(cfg.data.fields or {}))]
  order = np.random.default_rng(cfg.seed).permutation(len(rows))
  n_eval = min(int(cfg.data.num_eval), len(rows) // 2)
  if n_eval < 1:
    raise ValueError(f"{len(rows)} preference row(s): too few for a held-out split; "
                     "set config.rm.eval_path.")
  return [rows[i] for i in order[n_eval:]], [rows[i] for i in order[:n_eval]]


def encode_pairs(tokenizer: Any, rows: list[dict], length: int, pad_id: int, *,
                 template: str = "concat", append_eos: bool = True) -> dict[str, np.ndarray]:
  """Right-padded token rows of chosen and rejected texts, [N, length] each.

  Trailing pad-id tokens are dropped, as in `RewardModel.score_ids`, so the
  score is read where transformers reads it (the last non-pad token).

  Returns chosen_tokens, chosen_mask, rejected_tokens, rejected_mask, tie_N
  (float 0/1), margin_N (float).
  """
  prompts = [r["prompt"] for r in rows]
  out: dict[str, np.ndarray] = {}
  for side in ("chosen", "rejected"):
    seqs = rms.encode_texts(tokenizer, prompts, [r[side] for r in rows], template=template,
                            append_eos=append_eos)
    seqs = rms.truncate_left(rms.strip_trailing_pad(seqs, pad_id), length, "preference")
    out[f"{side}_tokens"], out[f"{side}_mask"] = rms.pad_rows(seqs, length, pad_id)
  out["tie_N"] = np.asarray([r["tie"] for r in rows], np.float32)
  out["margin_N"] = np.asarray([r["margin"] for r in rows], np.float32)
  return out


def _longest(tokenizer: Any, rows: list[dict], rm: dict[str, Any]) -> int:
  n = 0
  for side in ("chosen", "rejected"):
    seqs = rms.encode_texts(tokenizer, [r["prompt"] for r in rows], [r[side] for r in rows],
                            template=rm["template"], append_eos=rm["append_eos"])
    n = max([n] + [len(s) for s in seqs])
  return n


# ---------------------------------------------------------------------------
# Model
# ---------------------------------------------------------------------------

def init_reward_model(cfg, workdir: str):
  """(ModelConfig, graphdef, params, tokenizer) of the scalar reward model to train."""
  dtype, pdtype = jnp.dtype(cfg.model.dtype), jnp.dtype(cfg.model.param_dtype)
  key = jax.random.PRNGKey(cfg.seed)
  if cfg.model.init == "checkpoint":
    path = cfg.model.checkpoint
    if not path:
      raise ValueError("config.model.init='checkpoint' needs config.model.checkpoint.")
    tok = hf_io.load_tokenizer(cfg.model.tokenizer or path)
    mcfg, graphdef, params = hf_io.load_hf(path, dtype=dtype, param_dtype=pdtype)
    if mcfg.is_reward_model:
      if mcfg.num_labels != 1:
        raise ValueError(f"{path!r} has {mcfg.num_labels} labels; the reward-model trainer "
                         "trains a scalar (1-label) head. Start from its causal LM instead.")
    else:
      mcfg, graphdef, params = models.reward_model_from_lm(mcfg, params, key, num_labels=1)
  elif cfg.model.init == "random":
    tok = common.make_tokenizer(cfg, workdir)
    lm_cfg = models.ModelConfig.from_hf(common.hf_arch_dict(cfg, tok), dtype=dtype,
                                        param_dtype=pdtype)
    mcfg, graphdef, params = models.init_reward_model(lm_cfg, key, num_labels=1)
  else:
    raise ValueError(f"Reward-model training: config.model.init={cfg.model.init!r}; valid "
                     "choices: checkpoint, random.")
  if mcfg.pad_token_id is None:
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    if pad is None:
      raise ValueError("The tokenizer has neither a pad nor an eos token; a reward model "
                       "needs a pad token id.")
    mcfg = mcfg.replace(pad_token_id=int(pad))
    graphdef, _ = models.abstract_model(mcfg)
  return mcfg, graphdef, params, tok


# ---------------------------------------------------------------------------
# Loss
# ---------------------------------------------------------------------------

def pair_scores(graphdef, params, batch: dict[str, Any]) -> tuple[jax.Array, jax.Array]:
  """Scalar scores (r_chosen [B], r_rejected [B]) in one forward over [2B, T]."""
  tokens = jnp.concatenate([batch["chosen_tokens"], batch["rejected_tokens"]], 0)
  mask = jnp.concatenate([batch["chosen_mask"], batch["rejected_mask"]], 0)
  s = rm_lib.score(graphdef, params, tokens, mask)[:, 0]
  b = batch["chosen_tokens"].shape[0]
  return s[:b], s[b:]


def preference_loss(r_chosen_N: jax.Array, r_rejected_N: jax.Array, batch: dict[str, Any],
                    rm: dict[str, Any]) -> tuple[jax.Array, dict[str, jax.Array]]:
  """The configured RM loss (mean over rows with batch['mask_N'] > 0) and metrics."""
  mask = batch["mask_N"] > 0
  tie = batch["tie_N"] > 0
  margin = rm["margin"] + batch["margin_N"]
  if rm["loss"] == "bradley_terry":
    return RM_LOSSES.get("bradley_terry")(r_chosen_N, r_rejected_N, margin=margin,
                                          center_coef=rm["center_coef"], mask_N=mask & ~tie)
  loss, metrics = RM_LOSSES.get("soli_tie")(r_chosen_N, r_rejected_N, tie, margin=margin,
                                            tie_margin=rm["tie_margin"], mask_N=mask)
  if rm["center_coef"]:
    c = jnp.where(mask, jnp.square(r_chosen_N + r_rejected_N), 0.0)
    loss = loss + rm["center_coef"] * c.sum() / jnp.maximum(mask.sum(), 1)
  return loss, metrics


def _take(data: dict[str, np.ndarray], idx: np.ndarray, batch: int) -> dict[str, np.ndarray]:
  """Rows idx of data padded to `batch` rows (padding rows: mask_N 0)."""
  out = {}
  for k, v in data.items():
    x = v[idx]
    if len(idx) < batch:
      x = np.concatenate([x, np.zeros((batch - len(idx),) + x.shape[1:], x.dtype)])
    out[k] = x
  out["mask_N"] = (np.arange(batch) < len(idx)).astype(np.float32)
  if len(idx) < batch:  # padding rows: one real token so attention stays finite
    for side in ("chosen", "rejected"):
      out[f"{side}_mask"][len(idx):, 0] = True
  return out


def evaluate(score_fn, params, data: dict[str, np.ndarray], batch: int,
             rm: dict[str, Any]) -> dict[str, float]:
  """Held-out loss, pairwise accuracy (strict pairs) and tie gap."""
  n = len(data["tie_N"])
  rc, rr = np.zeros(n, np.float32), np.zeros(n, np.float32)
  for s in range(0, n, batch):
    idx = np.arange(s, min(s + batch, n))
    c, r = score_fn(params, _take(data, idx, batch))
    rc[idx], rr[idx] = np.asarray(c)[:len(idx)], np.asarray(r)[:len(idx)]
  full = dict(data, mask_N=np.ones(n, np.float32))
  loss, _ = preference_loss(jnp.asarray(rc), jnp.asarray(rr), full, rm)
  tie = data["tie_N"] > 0
  out = {"eval/loss": float(loss), "eval/num_pairs": float(n)}
  if (~tie).any():
    out["eval/accuracy"] = float(np.mean(rc[~tie] > rr[~tie]))
    out["eval/margin"] = float(np.mean(rc[~tie] - rr[~tie]))
  if tie.any():
    out["eval/tie_abs_gap"] = float(np.mean(np.abs(rc[tie] - rr[tie])))
  return out


# ---------------------------------------------------------------------------
# Training loop
# ---------------------------------------------------------------------------

def train_reward_model(cfg, workdir: str) -> dict[str, Any]:
  """Trains (or resumes) a scalar reward model in `workdir`; returns final metrics.

  Returns {'hf': export dir (or ''), 'steps', 'eval/accuracy', 'eval/loss', ...}.
  """
  os.makedirs(workdir, exist_ok=True)
  result_path = os.path.join(workdir, RESULT_FILE)
  if os.path.exists(result_path):
    logging.info("Reward-model training already finished: %s", result_path)
    with open(result_path) as f:
      return json.load(f)
  rm = rm_settings(cfg)
  main = jax.process_index() == 0
  mcfg, graphdef, params, tok = init_reward_model(cfg, workdir)
  train_rows, eval_rows = load_preference_rows(cfg, rm)
  if rm["loss"] == "bradley_terry":
    n_tie = sum(r["tie"] for r in train_rows)
    if n_tie:
      logging.warning("bradley_terry ignores %d tie row(s) (use rm.loss=soli_tie).", n_tie)
  length = min(int(rm["max_len"]), -(-_longest(tok, train_rows + eval_rows, rm) // 8) * 8)
  pad_id = int(mcfg.pad_token_id)
  enc = lambda rows: encode_pairs(tok, rows, length, pad_id, template=rm["template"],
                                  append_eos=rm["append_eos"])
  train_data, eval_data = enc(train_rows), enc(eval_rows)
  steps, bs = int(cfg.train.steps), int(cfg.train.batch_prompts)
  tx = make_optimizer(cfg.optim, steps)
  opt_state = tx.init(params)

  def loss_fn(p, batch):
    rc, rr = pair_scores(graphdef, p, batch)
    return preference_loss(rc, rr, batch, rm)

  @jax.jit
  def update(p, o, batch):
    (loss, metrics), g = jax.value_and_grad(loss_fn, has_aux=True)(p, batch)
    u, o = tx.update(g, o, p)
    return optax.apply_updates(p, u), o, dict(metrics, loss=loss,
                                              grad_norm=optax.tree.norm(g))

  score_fn = jax.jit(lambda p, batch: pair_scores(graphdef, p, batch))

  ckpt = Checkpointer(os.path.join(workdir, "checkpoints"), keep=cfg.train.keep_checkpoints)
  start = ckpt.latest_step() or 0
  if start:
    (params, opt_state), _, _ = ckpt.restore(start, (params, opt_state))
    logging.info("Resumed reward-model training at step %d.", start)
  writer = MetricsWriter(workdir, enabled=main)
  writer.truncate_after(start)
  n_train = len(train_rows)
  rng = np.random.default_rng(cfg.seed + 1)
  order = np.concatenate([rng.permutation(n_train) if cfg.data.shuffle else np.arange(n_train)
                          for _ in range((steps * bs) // n_train + 1)])
  progress = None
  if main and cfg.train.progress:
    from tqdm.auto import tqdm
    progress = tqdm(total=steps, initial=start, desc="reward model", dynamic_ncols=True)
  t0 = time.time()
  last_eval: dict[str, float] = {}
  for step in range(start, steps):
    batch = _take(train_data, order[step * bs:(step + 1) * bs], bs)
    params, opt_state, m = update(params, opt_state, batch)
    done = step + 1
    row: dict[str, Any] = {}
    if done % max(cfg.train.log_every, 1) == 0 or done == steps:
      row.update({f"rm/{k}": v for k, v in m.items()})
    if (cfg.train.eval_every and done % cfg.train.eval_every == 0) or done == steps:
      last_eval = evaluate(score_fn, params, eval_data, bs, rm)
      row.update(last_eval)
    if row:
      row["time/elapsed_s"] = time.time() - t0
      row = writer.write(done, row)
      if progress is not None:
        post = {"loss": row.get("rm/loss"), "acc": row.get("rm/accuracy"),
                "eval_acc": last_eval.get("eval/accuracy")}
        progress.set_postfix({k: f"{v:.3f}" for k, v in post.items() if v is not None},
                             refresh=False)
    if progress is not None:
      progress.update(1)
    if cfg.train.ckpt_every and done % cfg.train.ckpt_every == 0 and done < steps:
      ckpt.save(done, (params, opt_state), {"step": done})
  if not last_eval:
    last_eval = evaluate(score_fn, params, eval_data, bs, rm)
  ckpt.close()
  if progress is not None:
    progress.close()
  out_dir = ""
  if cfg.train.export_hf:
    out_dir = os.path.join(workdir, "hf")
    if main:
      export_reward_model(out_dir, mcfg, params, tok, template=rm["template"],
                          append_eos=rm["append_eos"], max_len=int(rm["max_len"]))
  result = {"hf": out_dir, "steps": steps, "num_train_pairs": n_train,
            "seconds": time.time() - t0, **last_eval}
  if main:
    plot_curves(read_jsonl(writer.path), ["rm/loss", "rm/accuracy", "eval/accuracy"],
                os.path.join(workdir, "reward_model.png"))
    common.save_json(result_path, result)
  writer.close()
  logging.info("Reward model: eval accuracy %s after %d steps (%.1f s) -> %s",
               last_eval.get("eval/accuracy"), steps, time.time() - t0, out_dir)
  return result


def export_reward_model(out_dir: str, mcfg, params, tokenizer, *, template: str = "concat",
                        append_eos: bool = True, max_len: int = rms.DEFAULT_MAX_LEN) -> str:
  """HF *ForSequenceClassification dir + tokenizer + rlx_reward_model.json."""
  rm_lib.save_reward_model(out_dir, mcfg, params, tokenizer=tokenizer)
  common.save_json(os.path.join(out_dir, rms.META_FILE),
                   {"template": template, "append_eos": bool(append_eos), "max_len": int(max_len)})
  return out_dir
