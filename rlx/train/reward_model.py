"""Reward-model training with every loss in rlx.losses.reward_model (docs/methods.md).

    python -m rlx.main --config=configs/reward_model.py:path=prefs.jsonl --workdir=runs/rm
    python -m rlx.main --config=configs/reward_model.py:loss=ordinal --workdir=runs/oprm

`rm.loss` picks the loss and with it the data layout (rows from a local file,
`config.data.task = "file"`, `data.path`, field names mapped by `data.fields`,
or a synthetic rule of rlx.data.preferences):

  bradley_terry    pairs {prompt, chosen, rejected[, tie][, margin]}; scalar head;
                   -log sigmoid(r_w - r_l - m) + c (r_w + r_l)^2 (m = rm.margin + the
                   row's margin, c = rm.center_coef; tie rows are dropped).
  soli_tie         the same pairs; tie rows get -log sigmoid(r1 - r2 - m_t)
                   - log sigmoid(r2 - r1 - m_t), m_t = rm.tie_margin.
  ordinal          the same pairs[, region_chosen, region_rejected]; rm.num_ratings
                   logits (OPRM, reward E[s]); -log P(chosen > rejected); rows' region
                   indices into rm.regions give region flooding (-1: none).
  multi_response   {prompt, responses: [M texts], best}; scalar head scoring each
                   response; -log softmax(scores)[best].
  multi_attribute  {prompt, response, <one numeric column per rm.attributes>}; one
                   head per attribute; MSE (a missing value is left out); reward
                   w . y_hat with w = rm.attribute_weights (default 1/K each).
Synthetic tasks: pref_count, pref_arith (pairs), multi_count (multi_response),
attr_count (multi_attribute). The held-out split is `rm.eval_path` if set, else
`data.num_eval` rows (at most half) drawn at random with `seed`.

Model: a `*ForSequenceClassification` head on a decoder: `model.init =
"checkpoint"` starts from an HF causal LM (new N(0, 0.02) score head) or an HF
reward model with the right number of labels (kept as is); `"random"` builds
`model.arch` with the character tokenizer.

Metrics (metrics.jsonl, TensorBoard, console): rm/loss, rm/accuracy (train
batch, where the loss defines one), eval/loss and eval/accuracy for every loss
(pairs: strict pairs ranked right by the reward; multi_response: best response
scored highest; multi_attribute: held-out row pairs ordered by w . y_hat as by
w . y), eval/tie_abs_gap (pairs with ties), eval/mse_<attribute>. The result is
exported to `workdir/hf` in HF layout with the tokenizer and
`rlx_reward_model.json` (template, max_len, and `head`: the label index, the
attribute weights, or "expected_rating"), so
`rlx.rewards.reward_models.make_reward_model_fn(workdir + "/hf")` scores with
the trained reward and `transformers.AutoModelForSequenceClassification` loads it.
"""
from __future__ import annotations

import json
import logging
import math
import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from rlx import models
from rlx.losses.reward_model import RM_LOSSES, oprm_reward
from rlx.models import hf_io
from rlx.models import reward_model as rm_lib
from rlx.rewards import reward_models as rms
from rlx.train import common
from rlx.train.checkpoint import Checkpointer
from rlx.train.metrics import MetricsWriter, plot_curves, read_jsonl
from rlx.train.optim import make_optimizer

# Settings of the `rm` config section (configs/base.py), with their defaults.
RM_DEFAULTS: dict[str, Any] = dict(
    loss="bradley_terry",  # bradley_terry | soli_tie | ordinal | multi_response | multi_attribute
    margin=0.0,  # BT margin (added to a row's `margin` column)
    center_coef=0.0,  # reward centring c (r_w + r_l)^2; 0.01 when used
    tie_margin=0.0,  # soli_tie: margin of the tie term
    max_len=128,  # tokens per prompt+response row (longer rows keep their last tokens)
    template="concat",  # concat | chat | format string with {prompt} and {completion}
    append_eos=True,  # end every row with <eos> (the score is read at the last token)
    eval_path="",  # held-out preference file ("" -> split from the training data)
    num_ratings=9,  # ordinal: ratings 1..S, one logit each
    regions=(),  # ordinal: region flooding rating ranges ((lo, hi), ...), 1-based inclusive
    attributes=(),  # multi_attribute: attribute columns, one head each (attr_count: its two)
    attribute_weights=(),  # multi_attribute: reward weights w (() -> 1/K each)
)
TRAIN_LOSSES = ("bradley_terry", "soli_tie", "ordinal", "multi_response", "multi_attribute")
LAYOUTS = {"bradley_terry": "pairs", "soli_tie": "pairs", "ordinal": "pairs",
           "multi_response": "responses", "multi_attribute": "attributes"}
PREFERENCE_TASKS = {"pref_count": "count", "pref_arith": "arith"}
SYNTHETIC_TASKS = {"pairs": tuple(PREFERENCE_TASKS), "responses": ("multi_count",),
                   "attributes": ("attr_count",)}
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
    raise ValueError(f"config.rm.loss={out['loss']!r}; valid choices: {', '.join(TRAIN_LOSSES)}.")
  rms.check_template(out["template"])
  out["regions"] = tuple(tuple(int(x) for x in r) for r in out["regions"])
  out["attributes"] = tuple(str(a) for a in out["attributes"])
  out["attribute_weights"] = tuple(float(w) for w in out["attribute_weights"])
  if out["loss"] == "ordinal" and int(out["num_ratings"]) < 2:
    raise ValueError(f"config.rm.num_ratings={out['num_ratings']} must be >= 2.")
  return out


def num_labels(rm: dict[str, Any]) -> int:
  """Labels of the head the loss trains."""
  if rm["loss"] == "ordinal":
    return int(rm["num_ratings"])
  if rm["loss"] == "multi_attribute":
    return len(rm["attributes"])
  return 1


def reward_head(rm: dict[str, Any]) -> int | str | list[float]:
  """The export's `head`: how rlx.rewards.reward_models turns the labels into a reward."""
  if rm["loss"] == "ordinal":
    return "expected_rating"
  if rm["loss"] == "multi_attribute":
    k = len(rm["attributes"])
    return list(rm["attribute_weights"]) or [1.0 / k] * k
  return 0


# ---------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------

_TEXT = (str, list)
_LAYOUT_FIELDS = {
    "pairs": ({"prompt": _TEXT, "chosen": _TEXT, "rejected": _TEXT}, ("prompt", "chosen", "rejected")),
    "responses": ({"prompt": _TEXT, "responses": list, "best": int}, ("prompt", "responses", "best")),
    "attributes": ({"prompt": _TEXT, "response": _TEXT}, ("prompt", "response")),
}


def _file_rows(path: str, fields: dict[str, str], layout: str) -> list[dict[str, Any]]:
  from rlx.data import load_rows
  types, required = _LAYOUT_FIELDS[layout]
  mapping = {k: k for k in types}
  mapping.update(fields)
  return load_rows(path, fields=mapping, types=types, required=required, keep_unmapped=True)


def _synthetic_rows(task: str, n: int, seed: int) -> list[dict[str, Any]]:
  from rlx.data import preferences
  if task in PREFERENCE_TASKS:
    return preferences.make_preference_rows(PREFERENCE_TASKS[task], n, seed=seed)
  if task == "multi_count":
    return preferences.make_multi_response_rows(n, seed=seed)
  return preferences.make_attribute_rows(n, seed=seed)


def _clean(rows: list[dict], layout: str, rm: dict[str, Any]) -> list[dict]:
  for r in rows:
    if layout == "pairs":
      r["tie"] = bool(r.get("tie") or False)
      r["margin"] = float(r.get("margin") or 0.0)
      for side in ("chosen", "rejected"):
        v = r.get(f"region_{side}")
        r[f"region_{side}"] = -1 if v is None else int(v)
    elif layout == "responses":
      if not 0 <= r["best"] < len(r["responses"]):
        raise ValueError(f"A multi_response row has best={r['best']} for "
                         f"{len(r['responses'])} responses.")
    else:
      missing = [a for a in rm["attributes"] if a not in r]
      if len(missing) == len(rm["attributes"]):
        raise ValueError(f"A multi_attribute row has none of the attribute columns "
                         f"{list(rm['attributes'])}; its fields: {sorted(r)}.")
      r["targets"] = [math.nan if r.get(a) is None else float(r[a]) for a in rm["attributes"]]
  return rows


def load_preference_rows(cfg, rm: dict[str, Any]) -> tuple[list[dict], list[dict]]:
  """(train rows, held-out rows) of the layout of `rm.loss` (module docstring)."""
  layout = LAYOUTS[rm["loss"]]
  task = cfg.data.task
  fields = dict(cfg.data.fields or {})
  if task in SYNTHETIC_TASKS[layout]:
    if layout == "attributes" and not rm["attributes"]:
      from rlx.data.preferences import ATTRIBUTES
      rm["attributes"] = ATTRIBUTES
    rows = _synthetic_rows(task, cfg.data.num_train + cfg.data.num_eval, cfg.seed)
  elif task == "file":
    if not cfg.data.path:
      raise ValueError(f"config.data.task='file' needs config.data.path (a file with "
                       f"{', '.join(_LAYOUT_FIELDS[layout][1])} fields for rm.loss="
                       f"{rm['loss']!r}).")
    rows = _file_rows(cfg.data.path, fields, layout)
  else:
    raise ValueError(f"Reward-model training with rm.loss={rm['loss']!r}: config.data.task="
                     f"{task!r}; valid choices: file, {', '.join(SYNTHETIC_TASKS[layout])}.")
  if layout == "attributes" and not rm["attributes"]:
    raise ValueError("rm.loss='multi_attribute' needs config.rm.attributes (the attribute "
                     "columns, one head each).")
  if rm["attribute_weights"] and len(rm["attribute_weights"]) != len(rm["attributes"]):
    raise ValueError(f"config.rm.attribute_weights has {len(rm['attribute_weights'])} values "
                     f"for {len(rm['attributes'])} attributes.")
  rows = _clean(rows, layout, rm)
  if rm["eval_path"]:
    return rows, _clean(_file_rows(rm["eval_path"], fields, layout), layout, rm)
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
  out["region_chosen_N"] = np.asarray([r.get("region_chosen", -1) for r in rows], np.int32)
  out["region_rejected_N"] = np.asarray([r.get("region_rejected", -1) for r in rows], np.int32)
  return out


def _encode(tokenizer, prompts, texts, length, pad_id, template, append_eos, what):
  seqs = rms.encode_texts(tokenizer, prompts, texts, template=template, append_eos=append_eos)
  return rms.pad_rows(rms.truncate_left(rms.strip_trailing_pad(seqs, pad_id), length, what),
                      length, pad_id)


def encode_rows(tokenizer: Any, rows: list[dict], length: int, pad_id: int, rm: dict[str, Any]
                ) -> dict[str, np.ndarray]:
  """Arrays (leading axis: rows) of the loss's layout; keys ending in _mask are token masks.

  pairs: see `encode_pairs`. responses: response_tokens/_mask [N, M, T]
  (M = most responses in a row; empty slots hold one pad token), slots_NM,
  best_N. attributes: tokens/token_mask [N, T], targets_NK (NaN -> 0),
  target_valid_NK.
  """
  layout = LAYOUTS[rm["loss"]]
  kw = dict(template=rm["template"], append_eos=rm["append_eos"])
  if layout == "pairs":
    return encode_pairs(tokenizer, rows, length, pad_id, **kw)
  if layout == "responses":
    m = max(len(r["responses"]) for r in rows)
    flat_p = [r["prompt"] for r in rows for _ in range(m)]
    flat_t = [(r["responses"] + [""] * m)[j] for r in rows for j in range(m)]
    tokens, mask = _encode(tokenizer, flat_p, flat_t, length, pad_id, what="response", **kw)
    slots = np.asarray([[j < len(r["responses"]) for j in range(m)] for r in rows], bool)
    mask = mask.reshape(len(rows), m, length)
    mask[~slots, 0] = True  # empty slot: one token keeps its (unused) score finite
    return {"response_tokens": tokens.reshape(len(rows), m, length), "response_mask": mask,
            "slots_NM": slots, "best_N": np.asarray([r["best"] for r in rows], np.int32)}
  tokens, mask = _encode(tokenizer, [r["prompt"] for r in rows], [r["response"] for r in rows],
                         length, pad_id, what="attribute", **kw)
  targets = np.asarray([r["targets"] for r in rows], np.float32)
  valid = ~np.isnan(targets)
  return {"tokens": tokens, "token_mask": mask, "targets_NK": np.where(valid, targets, 0.0),
          "target_valid_NK": valid}


def _texts(rows: list[dict], layout: str) -> list[tuple[Any, Any]]:
  if layout == "pairs":
    return [(r["prompt"], r[side]) for r in rows for side in ("chosen", "rejected")]
  if layout == "responses":
    return [(r["prompt"], t) for r in rows for t in r["responses"]]
  return [(r["prompt"], r["response"]) for r in rows]


def _longest(tokenizer: Any, rows: list[dict], rm: dict[str, Any]) -> int:
  pairs = _texts(rows, LAYOUTS[rm["loss"]])
  seqs = rms.encode_texts(tokenizer, [p for p, _ in pairs], [t for _, t in pairs],
                          template=rm["template"], append_eos=rm["append_eos"])
  return max([0] + [len(s) for s in seqs])


# ---------------------------------------------------------------------------
# Model
# ---------------------------------------------------------------------------

def init_reward_model(cfg, workdir: str, labels: int = 1):
  """(ModelConfig, graphdef, params, tokenizer) of the reward model to train (`labels` heads)."""
  dtype, pdtype = jnp.dtype(cfg.model.dtype), jnp.dtype(cfg.model.param_dtype)
  key = jax.random.PRNGKey(cfg.seed)
  if cfg.model.init == "checkpoint":
    path = cfg.model.checkpoint
    if not path:
      raise ValueError("config.model.init='checkpoint' needs config.model.checkpoint.")
    tok = hf_io.load_tokenizer(cfg.model.tokenizer or path)
    mcfg, graphdef, params = hf_io.load_hf(path, dtype=dtype, param_dtype=pdtype)
    if mcfg.is_reward_model:
      if mcfg.num_labels != labels:
        raise ValueError(f"{path!r} has {mcfg.num_labels} labels; this loss trains a "
                         f"{labels}-label head. Start from its causal LM instead.")
    else:
      mcfg, graphdef, params = models.reward_model_from_lm(mcfg, params, key, num_labels=labels)
  elif cfg.model.init == "random":
    tok = common.make_tokenizer(cfg, workdir)
    lm_cfg = models.ModelConfig.from_hf(common.hf_arch_dict(cfg, tok), dtype=dtype,
                                        param_dtype=pdtype)
    mcfg, graphdef, params = models.init_reward_model(lm_cfg, key, num_labels=labels)
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

def _scores(graphdef, params, tokens: jax.Array, mask: jax.Array) -> jax.Array:
  """Head outputs [..., L] of token rows [..., T] (one forward over the flattened rows)."""
  lead = tokens.shape[:-1]
  s = rm_lib.score(graphdef, params, tokens.reshape(-1, tokens.shape[-1]),
                   mask.reshape(-1, mask.shape[-1]))
  return s.reshape(lead + s.shape[-1:])


def batch_scores(graphdef, params, batch: dict[str, Any], rm: dict[str, Any]
                 ) -> tuple[jax.Array, ...]:
  """pairs: (chosen [B, L], rejected [B, L]) in one forward over [2B, T];
  responses: (scores [B, M],); attributes: (predictions [B, K],)."""
  layout = LAYOUTS[rm["loss"]]
  if layout == "pairs":
    tokens = jnp.concatenate([batch["chosen_tokens"], batch["rejected_tokens"]], 0)
    mask = jnp.concatenate([batch["chosen_mask"], batch["rejected_mask"]], 0)
    s = _scores(graphdef, params, tokens, mask)
    b = batch["chosen_tokens"].shape[0]
    return s[:b], s[b:]
  if layout == "responses":
    return (_scores(graphdef, params, batch["response_tokens"], batch["response_mask"])[..., 0],)
  return (_scores(graphdef, params, batch["tokens"], batch["token_mask"]),)


def scalar_reward(scores_NL: jax.Array, rm: dict[str, Any]) -> jax.Array:
  """The reward of pair scores [N, L]: E[rating] for ordinal, else the one label."""
  return oprm_reward(scores_NL) if rm["loss"] == "ordinal" else scores_NL[:, 0]


def preference_loss(r_chosen_N: jax.Array, r_rejected_N: jax.Array, batch: dict[str, Any],
                    rm: dict[str, Any]) -> tuple[jax.Array, dict[str, jax.Array]]:
  """A pair loss (mean over rows with batch['mask_N'] > 0) and metrics; ordinal takes
  the rating logits [N, S], the others scalar scores [N]."""
  mask = batch["mask_N"] > 0
  tie = batch["tie_N"] > 0
  margin = rm["margin"] + batch["margin_N"]
  if rm["loss"] == "bradley_terry":
    return RM_LOSSES.get("bradley_terry")(r_chosen_N, r_rejected_N, margin=margin,
                                          center_coef=rm["center_coef"], mask_N=mask & ~tie)
  if rm["loss"] == "ordinal":
    regions = rm["regions"] or None
    return RM_LOSSES.get("ordinal")(
        r_chosen_N, r_rejected_N, region_c_N=batch["region_chosen_N"] if regions else None,
        region_r_N=batch["region_rejected_N"] if regions else None, regions=regions,
        mask_N=mask & ~tie)
  loss, metrics = RM_LOSSES.get("soli_tie")(r_chosen_N, r_rejected_N, tie, margin=margin,
                                            tie_margin=rm["tie_margin"], mask_N=mask)
  if rm["center_coef"]:
    c = jnp.where(mask, jnp.square(r_chosen_N + r_rejected_N), 0.0)
    loss = loss + rm["center_coef"] * c.sum() / jnp.maximum(mask.sum(), 1)
  return loss, metrics


def rm_loss(scores: tuple[jax.Array, ...], batch: dict[str, Any], rm: dict[str, Any]
            ) -> tuple[jax.Array, dict[str, jax.Array]]:
  """The configured loss of `batch_scores` output."""
  layout = LAYOUTS[rm["loss"]]
  mask = batch["mask_N"] > 0
  if layout == "pairs":
    sc, sr = scores
    if rm["loss"] != "ordinal":
      sc, sr = sc[:, 0], sr[:, 0]
    return preference_loss(sc, sr, batch, rm)
  if layout == "responses":
    return RM_LOSSES.get("multi_response")(scores[0], batch["best_N"], mask_NM=batch["slots_NM"],
                                           mask_N=mask)
  return RM_LOSSES.get("multi_attribute")(scores[0], batch["targets_NK"],
                                          mask_NK=batch["target_valid_NK"] & mask[:, None])


def _take(data: dict[str, np.ndarray], idx: np.ndarray, batch: int) -> dict[str, np.ndarray]:
  """Rows idx of data padded to `batch` rows (padding rows: mask_N 0)."""
  out = {}
  for k, v in data.items():
    x = v[idx]
    if len(idx) < batch:
      x = np.concatenate([x, np.zeros((batch - len(idx),) + x.shape[1:], x.dtype)])
      if k.endswith("_mask"):  # padding rows: one real token so attention stays finite
        x[len(idx):, ..., 0] = True
    out[k] = x
  out["mask_N"] = (np.arange(batch) < len(idx)).astype(np.float32)
  return out


def evaluate(score_fn, params, data: dict[str, np.ndarray], batch: int,
             rm: dict[str, Any]) -> dict[str, float]:
  """Held-out loss and accuracy of the configured loss (module docstring), plus the
  tie gap (pairs) and per-attribute MSE (multi_attribute)."""
  n = len(data["mask_N"]) if "mask_N" in data else len(next(iter(data.values())))
  parts: list[list[np.ndarray]] = []
  for s in range(0, n, batch):
    idx = np.arange(s, min(s + batch, n))
    out = score_fn(params, _take(data, idx, batch))
    parts.append([np.asarray(o)[:len(idx)] for o in out])
  scores = tuple(np.concatenate([p[i] for p in parts]) for i in range(len(parts[0])))
  full = dict(data, mask_N=np.ones(n, np.float32))
  loss, metrics = rm_loss(tuple(jnp.asarray(x) for x in scores), full, rm)
  res = {"eval/loss": float(loss), "eval/num_rows": float(n)}
  layout = LAYOUTS[rm["loss"]]
  if layout == "pairs":
    rc = np.asarray(scalar_reward(jnp.asarray(scores[0]), rm))
    rr = np.asarray(scalar_reward(jnp.asarray(scores[1]), rm))
    tie = data["tie_N"] > 0
    if (~tie).any():
      res["eval/accuracy"] = float(np.mean(rc[~tie] > rr[~tie]))
      res["eval/margin"] = float(np.mean(rc[~tie] - rr[~tie]))
    if tie.any():
      res["eval/tie_abs_gap"] = float(np.mean(np.abs(rc[tie] - rr[tie])))
  elif layout == "responses":
    res["eval/accuracy"] = float(metrics["accuracy"])
  else:
    for k, name in enumerate(rm["attributes"]):
      res[f"eval/mse_{name}"] = float(metrics[f"mse_{k}"])
    w = np.asarray(reward_head(rm), np.float32)
    valid = data["target_valid_NK"].all(1)
    pred, true = scores[0][valid] @ w, data["targets_NK"][valid] @ w
    i, j = np.triu_indices(len(true), 1)
    differ = true[i] != true[j]
    if differ.any():
      agree = np.sign(pred[i] - pred[j]) == np.sign(true[i] - true[j])
      res["eval/accuracy"] = float(np.mean(agree[differ]))
  return res


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
  train_rows, eval_rows = load_preference_rows(cfg, rm)
  mcfg, graphdef, params, tok = init_reward_model(cfg, workdir, num_labels(rm))
  train_data, eval_data = _encoded(rm, tok, mcfg, train_rows, eval_rows)
  steps, bs = int(cfg.train.steps), int(cfg.train.batch_prompts)
  tx = make_optimizer(cfg.optim, steps)
  opt_state = tx.init(params)
  update, score_fn = _rm_steps(graphdef, tx, rm)

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
  result = {"steps": steps, "loss": rm["loss"], "num_train_rows": n_train,
            "seconds": time.time() - t0, **last_eval}
  return _finish(cfg, workdir, rm, (mcfg, params, tok), writer, result)


def _encoded(rm: dict[str, Any], tok, mcfg, train_rows: list[dict], eval_rows: list[dict]):
  """(train, eval) arrays of the preference rows, padded to the longest row rounded
  up to 8 (at most rm.max_len); warns about tie rows a loss ignores."""
  if rm["loss"] in ("bradley_terry", "ordinal"):
    n_tie = sum(r["tie"] for r in train_rows)
    if n_tie:
      logging.warning("%s ignores %d tie row(s) (use rm.loss=soli_tie).", rm["loss"], n_tie)
  length = min(int(rm["max_len"]), -(-_longest(tok, train_rows + eval_rows, rm) // 8) * 8)
  enc = lambda rows: encode_rows(tok, rows, length, int(mcfg.pad_token_id), rm)
  return enc(train_rows), enc(eval_rows)


def _rm_steps(graphdef, tx: optax.GradientTransformation, rm: dict[str, Any]):
  """(update(params, opt_state, batch) -> (params, opt_state, metrics), score(params,
  batch) -> scores), both jitted."""
  def loss_fn(p, batch):
    return rm_loss(batch_scores(graphdef, p, batch, rm), batch, rm)

  @jax.jit
  def update(p, o, batch):
    (loss, metrics), g = jax.value_and_grad(loss_fn, has_aux=True)(p, batch)
    u, o = tx.update(g, o, p)
    return optax.apply_updates(p, u), o, dict(metrics, loss=loss,
                                              grad_norm=optax.tree.norm(g))

  return update, jax.jit(lambda p, batch: batch_scores(graphdef, p, batch, rm))


def _finish(cfg, workdir: str, rm: dict[str, Any], model, writer: MetricsWriter,
            result: dict[str, Any]) -> dict[str, Any]:
  """Exports the model (config.train.export_hf), plots the curves, writes the result
  file and returns the result with its 'hf' dir ('' without an export)."""
  mcfg, params, tok = model
  main = jax.process_index() == 0
  out_dir = ""
  if cfg.train.export_hf:
    out_dir = os.path.join(workdir, "hf")
    if main:
      export_reward_model(out_dir, mcfg, params, tok, template=rm["template"],
                          append_eos=rm["append_eos"], max_len=int(rm["max_len"]),
                          head=reward_head(rm), loss=rm["loss"],
                          labels=list(rm["attributes"]))
  result = {"hf": out_dir, **result}
  if main and os.path.exists(writer.path):  # steps=0 writes no metrics
    plot_curves(read_jsonl(writer.path), ["rm/loss", "rm/accuracy", "eval/accuracy"],
                os.path.join(workdir, "reward_model.png"))
    common.save_json(os.path.join(workdir, RESULT_FILE), result)
  writer.close()
  logging.info("Reward model: eval accuracy %s after %d steps (%.1f s) -> %s",
               result.get("eval/accuracy"), result["steps"], result["seconds"], out_dir)
  return result


def export_reward_model(out_dir: str, mcfg, params, tokenizer, *, template: str = "concat",
                        append_eos: bool = True, max_len: int = rms.DEFAULT_MAX_LEN,
                        head: int | str | list[float] = 0, loss: str = "bradley_terry",
                        labels: list[str] | None = None) -> str:
  """HF *ForSequenceClassification dir + tokenizer + rlx_reward_model.json
  (template, append_eos, max_len, head: how the labels make the reward, loss, labels)."""
  rm_lib.save_reward_model(out_dir, mcfg, params, tokenizer=tokenizer)
  common.save_json(os.path.join(out_dir, rms.META_FILE),
                   {"template": template, "append_eos": bool(append_eos), "max_len": int(max_len),
                    "head": head, "loss": loss, "labels": list(labels or [])})
  return out_dir
