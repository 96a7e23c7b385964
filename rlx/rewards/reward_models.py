"""Reward models as reward functions, ensembles of them, and a pairwise judge.

A reward model is a local `*ForSequenceClassification` HF directory (config.json,
safetensors, tokenizer), e.g. one written by `rlx.train.reward_model`:

    fn = make_reward_model_fn("runs/rm/hf", batch_size=16, max_len=256)
    fn(prompts, completions)                      # -> list[float] (TRL signature)

    # in a config (kwargs are bound with functools.partial; the model loads on
    # the first call and is cached per checkpoint path):
    c.rewards.rm = {"fn": "reward_model", "weight": 1.0,
                    "kwargs": {"checkpoint": "runs/rm/hf"}}
    c.rewards.ens = {"fn": "reward_model_ensemble", "weight": 1.0,
                     "kwargs": {"checkpoints": ["rm1", "rm2"], "aggregation": "min"}}

Text -> tokens (`template`): 'concat' = tokens(prompt, with the tokenizer's
special tokens) + tokens(completion) [+ <eos>]; 'chat' = the tokenizer's chat
template over a user and an assistant message; any other string is a format
string with {prompt} and {completion}. A directory written by the rlx trainer
holds `rlx_reward_model.json` with the template and max_len it was trained
with; those are the defaults when the caller passes None.
Trailing pad-id tokens are dropped (transformers scores the last non-pad
token). Rows are sorted by length, cut into chunks of `batch_size` rows, each chunk
padded to the smallest length bucket that fits (one compile per bucket);
rows longer than max_len keep their last max_len tokens (a warning is logged).

Pairwise judge (Pref-GRPO): `PairwiseJudge.judge_group(prompt, completions)`
returns O [R, R] with O[i, j] = 1 (i beats j), 0.5 (tie), 0 (loss) and NaN on
the diagonal; `judge_batch` lays groups out as `AdvantageInputs.pairwise_NM`.
"""
from __future__ import annotations

import json
import logging
import os
import threading
from typing import Any, Callable, Sequence

import jax
import numpy as np

from rlx import models
from rlx.models import reward_model as rm_lib
from rlx.models import hf_io
from rlx.rewards.registry import REWARD_FNS
from rlx.registry import check_choice
from rlx.rewards.rules import completion_text
from rlx.train import layout
from rlx.ensemble import ENSEMBLE_AGGREGATIONS, ensemble_aggregate

logger = logging.getLogger(__name__)

META_FILE = "rlx_reward_model.json"
TEMPLATES = ("concat", "chat")  # or a format string with {prompt} and {completion}
PADDING_SIDES = ("right", "left")
JUDGE_MODES = ("reward", "pair")
PAIR_TEMPLATE = "{prompt}\nResponse A: {a}\nResponse B: {b}\nWhich response is better?"
DEFAULT_MAX_LEN = 512

_score_jit = jax.jit(rm_lib.score, static_argnums=0)


# ---------------------------------------------------------------------------
# Text -> padded token rows
# ---------------------------------------------------------------------------

def _prompt_text(prompt: Any, template: str) -> str:
  if isinstance(prompt, str):
    return prompt
  raise ValueError(f"A chat-message prompt needs template='chat' (got template {template!r}).")


def check_template(template: str) -> str:
  if template in TEMPLATES:
    return template
  if "{prompt}" in template and "{completion}" in template:
    return template
  raise ValueError(f"Unknown reward-model template {template!r}. Valid choices: "
                   f"{', '.join(TEMPLATES)}, or a format string with {{prompt}} and "
                   "{completion}.")


def encode_texts(tokenizer: Any, prompts: Sequence[Any], completions: Sequence[Any], *,
                 template: str = "concat", append_eos: bool = True) -> list[list[int]]:
  """Token ids of prompt+completion rows (see the module docstring for `template`).

  append_eos adds <eos> after 'concat' and format-string rows (the score is
  read at the last token, so every row ends on the same token).
  """
  if len(prompts) != len(completions):
    raise ValueError(f"{len(prompts)} prompts but {len(completions)} completions.")
  if not prompts:
    return []
  template = check_template(template)
  comps = [completion_text(c) for c in completions]
  eos = [int(tokenizer.eos_token_id)] if append_eos and tokenizer.eos_token_id is not None else []
  if template == "concat":
    p_ids = tokenizer([_prompt_text(p, template) for p in prompts],
                      add_special_tokens=True)["input_ids"]
    c_ids = tokenizer(comps, add_special_tokens=False)["input_ids"]
    return [list(p) + list(c) + eos for p, c in zip(p_ids, c_ids)]
  if template == "chat":
    texts = []
    for p, c in zip(prompts, comps):
      msgs = list(p) if not isinstance(p, str) else [{"role": "user", "content": p}]
      texts.append(tokenizer.apply_chat_template(
          msgs + [{"role": "assistant", "content": c}], tokenize=False))
    return [list(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]
  texts = [template.format(prompt=_prompt_text(p, template), completion=c)
           for p, c in zip(prompts, comps)]
  return [list(ids) + eos for ids in tokenizer(texts, add_special_tokens=True)["input_ids"]]


def pad_rows(seqs: Sequence[Sequence[int]], length: int, pad_id: int, *, side: str = "right",
             num_rows: int | None = None) -> tuple[np.ndarray, np.ndarray]:
  """[num_rows, length] int32 tokens and bool mask; extra rows are all padding."""
  check_choice(side, PADDING_SIDES, "side", "pad_rows")
  n = len(seqs) if num_rows is None else num_rows
  tokens = np.full((n, length), pad_id, np.int32)
  mask = np.zeros((n, length), bool)
  for i, s in enumerate(seqs):
    if len(s) > length:
      raise ValueError(f"Row {i} has {len(s)} tokens > {length}.")
    if not len(s):
      continue
    sl = slice(0, len(s)) if side == "right" else slice(length - len(s), length)
    tokens[i, sl] = s
    mask[i, sl] = True
  return tokens, mask


def strip_trailing_pad(seqs: Sequence[Sequence[int]], pad_id: int) -> list[list[int]]:
  """Drops pad-id tokens at the end of each row (at least one token is kept).

  transformers' *ForSequenceClassification scores the last token that is not
  the pad id, so a row ending in pad ids (e.g. <eos> when pad == eos) is
  scored where transformers scores it.
  """
  out = []
  for s in seqs:
    s = list(s)
    while len(s) > 1 and s[-1] == pad_id:
      s.pop()
    out.append(s)
  return out


def truncate_left(seqs: list[list[int]], max_len: int,
                  what: str = "reward-model") -> list[list[int]]:
  """Keeps the last max_len tokens of each row (logs how many were cut)."""
  cut = sum(len(s) > max_len for s in seqs)
  if cut:
    logger.warning("%d %s row(s) longer than max_len=%d keep their last %d tokens.", cut, what,
                   max_len, max_len)
    seqs = [s[-max_len:] if len(s) > max_len else s for s in seqs]
  return seqs


# ---------------------------------------------------------------------------
# A loaded reward model
# ---------------------------------------------------------------------------

class RewardModel:
  """A reward model with its tokenizer: text or tokens -> scores [N, num_labels].

  Attributes: cfg (ModelConfig), graphdef, params, tokenizer, meta (the
  checkpoint's rlx_reward_model.json, {} if absent).
  """

  def __init__(self, cfg: Any, graphdef: Any, params: Any, tokenizer: Any,
               meta: dict[str, Any] | None = None):
    self.cfg, self.graphdef, self.params, self.tokenizer = cfg, graphdef, params, tokenizer
    self.meta = dict(meta or {})
    # The config's pad id is the one transformers pools with; then the tokenizer's.
    pad = cfg.pad_token_id
    if pad is None and tokenizer is not None:
      pad = tokenizer.pad_token_id
    self.pad_id = int(pad if pad is not None else (cfg.eos_token_ids or (0,))[0])

  @classmethod
  def load(cls, path: str | os.PathLike, *, dtype: Any = None,
           tokenizer: str | os.PathLike | None = None) -> "RewardModel":
    """Loads a *ForSequenceClassification dir (+ its tokenizer, or `tokenizer`)."""
    path = os.fspath(path)
    cfg, graphdef, params = rm_lib.load_reward_model(path, dtype=dtype, param_dtype=dtype)
    from rlx.parallel import model_mesh
    from rlx.parallel.models import place_reward_model, reward_model_mesh
    params = place_reward_model(params)  # config.mesh.reward_models (set by the trainer)
    mm = model_mesh(*reward_model_mesh())  # activations (and splash) on that mesh too
    if mm is not None:
      cfg, graphdef = models.with_attention(cfg, mesh=mm)
    tok = hf_io.load_tokenizer(tokenizer or path, cfg)
    meta_path = os.path.join(path, META_FILE)
    meta = {}
    if os.path.exists(meta_path):
      with open(meta_path) as f:
        meta = json.load(f)
    return cls(cfg, graphdef, params, tok, meta)

  @property
  def num_labels(self) -> int:
    return self.cfg.num_labels

  def setting(self, name: str, value: Any, default: Any) -> Any:
    """value, else the checkpoint's rlx_reward_model.json entry, else default."""
    if value is not None:
      return value
    return self.meta.get(name, default)

  def score_tokens(self, tokens_BT: np.ndarray, mask_BT: np.ndarray) -> np.ndarray:
    """Scores [B, num_labels] float32 of a padded batch (one jit per shape)."""
    return np.asarray(_score_jit(self.graphdef, self.params, tokens_BT, mask_BT), np.float32)

  def score_ids(self, seqs: Sequence[Sequence[int]], *, batch_size: int = 8,
                max_len: int | None = None, padding_side: str = "right",
                buckets: Sequence[int] | None = None) -> np.ndarray:
    """Scores [N, num_labels] of token rows, in chunks of batch_size rows.

    Rows are sorted by length; each chunk is padded to batch_size rows and to
    the smallest bucket that holds its longest row.
    """
    if batch_size < 1:
      raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
    max_len = int(self.setting("max_len", max_len, DEFAULT_MAX_LEN))
    buckets = sorted(buckets or layout.length_buckets((), max_len, "reward model buckets"))
    seqs = truncate_left(strip_trailing_pad(seqs, self.pad_id), max_len)
    n = len(seqs)
    out = np.zeros((n, self.num_labels), np.float32)
    order = np.argsort([len(s) for s in seqs], kind="stable")
    for start in range(0, n, batch_size):
      idx = order[start:start + batch_size]
      chunk = [seqs[i] for i in idx]
      longest = max(max(len(s) for s in chunk), 1)
      length = next((b for b in buckets if b >= longest), max_len)
      tokens, mask = pad_rows(chunk, length, self.pad_id, side=padding_side, num_rows=batch_size)
      mask[len(chunk):, -1 if padding_side == "left" else 0] = True  # dummy rows: one token
      out[idx] = self.score_tokens(tokens, mask)[:len(chunk)]
    return out

  def encode(self, prompts: Sequence[Any], completions: Sequence[Any], *,
             template: str | None = None, append_eos: bool | None = None) -> list[list[int]]:
    return encode_texts(self.tokenizer, prompts, completions,
                        template=self.setting("template", template, "concat"),
                        append_eos=self.setting("append_eos", append_eos, True))

  def score(self, prompts: Sequence[Any], completions: Sequence[Any], *,
            template: str | None = None, append_eos: bool | None = None, batch_size: int = 8,
            max_len: int | None = None, padding_side: str = "right",
            buckets: Sequence[int] | None = None) -> np.ndarray:
    """Scores [N, num_labels] of (prompt, completion) texts."""
    seqs = self.encode(prompts, completions, template=template, append_eos=append_eos)
    return self.score_ids(seqs, batch_size=batch_size, max_len=max_len,
                          padding_side=padding_side, buckets=buckets)


_CACHE: dict[tuple, RewardModel] = {}
_LOCK = threading.Lock()


def get_reward_model(checkpoint: str | os.PathLike, *, dtype: Any = None,
                     tokenizer: str | os.PathLike | None = None) -> RewardModel:
  """The RewardModel of a checkpoint dir, loaded once per (path, dtype, tokenizer)."""
  if not checkpoint:
    raise ValueError("reward_model needs `checkpoint`: a local *ForSequenceClassification "
                     "Hugging Face directory.")
  from rlx.parallel.models import reward_model_mesh
  mesh = reward_model_mesh()[0]
  key = (os.path.realpath(os.fspath(checkpoint)), str(dtype),
         os.path.realpath(os.fspath(tokenizer)) if tokenizer else None,
         None if mesh is None else (tuple(d.id for d in mesh.devices.flat), mesh.axis_names,
                                     mesh.devices.shape))
  with _LOCK:
    if key not in _CACHE:
      _CACHE[key] = RewardModel.load(checkpoint, dtype=dtype, tokenizer=tokenizer)
    return _CACHE[key]


def clear_cache() -> None:
  """Forgets every cached reward model."""
  with _LOCK:
    _CACHE.clear()


def head_reward(scores_NL: np.ndarray, head: int | str | Sequence[float] = 0) -> np.ndarray:
  """Scalar reward [N] from scores [N, L]: column `head`, scores @ weights, or with
  head="expected_rating" E[s] = softmax(scores) . (1..L) (an ordinal/OPRM head)."""
  L = scores_NL.shape[-1]
  if isinstance(head, str):
    if head != "expected_rating":
      raise ValueError(f"head={head!r}: a label index, label weights or 'expected_rating'.")
    z = np.exp(scores_NL - scores_NL.max(-1, keepdims=True))
    return (z / z.sum(-1, keepdims=True)) @ np.arange(1, L + 1, dtype=np.float32)
  if isinstance(head, (int, np.integer)):
    if not -L <= head < L:
      raise ValueError(f"head={head} out of range for a reward model with {L} label(s).")
    return scores_NL[:, head]
  w = np.asarray(head, np.float32)
  if w.shape != (L,):
    raise ValueError(f"head weights have shape {list(w.shape)}; the reward model has "
                     f"{L} label(s).")
  return scores_NL @ w


# ---------------------------------------------------------------------------
# Reward functions (TRL signature)
# ---------------------------------------------------------------------------

@REWARD_FNS.register("reward_model")
def reward_model(prompts: Sequence[Any], completions: Sequence[Any], *, checkpoint: str,
                 batch_size: int = 8, max_len: int | None = None, template: str | None = None,
                 head: int | str | Sequence[float] | None = None,
                 append_eos: bool | None = None,
                 padding_side: str = "right", dtype: Any = None, tokenizer: str | None = None,
                 **columns: Any) -> list[float]:
  """Reward-model score of each completion (checkpoint loaded lazily, then cached).

  checkpoint: *ForSequenceClassification HF dir. head: label index,
  weights over the labels (multi-attribute reward w . y_hat) or
  'expected_rating' (ordinal head); None -> the checkpoint's
  rlx_reward_model.json, else 0. template,
  max_len, append_eos: None -> the checkpoint's rlx_reward_model.json, else
  'concat', 512, True. Dataset columns are ignored (a column named like one
  of these options would override it).
  """
  del columns
  model = get_reward_model(checkpoint, dtype=dtype, tokenizer=tokenizer)
  scores = model.score(prompts, completions, template=template, append_eos=append_eos,
                       batch_size=batch_size, max_len=max_len, padding_side=padding_side)
  return [float(x) for x in head_reward(scores, model.setting("head", head, 0))]


def make_reward_model_fn(checkpoint_dir: str | os.PathLike, *, batch_size: int = 8,
                         max_len: int | None = None, template: str | None = None,
                         head: int | str | Sequence[float] | None = None,
                         **kw: Any) -> Callable[..., list]:
  """fn(prompts, completions, **columns) -> list[float] scoring with one reward model.

  kw: append_eos, padding_side, dtype, tokenizer (see `reward_model`).
  """
  if template is not None:
    check_template(template)

  def fn(prompts, completions, **columns):
    return reward_model(prompts, completions, checkpoint=os.fspath(checkpoint_dir),
                        batch_size=batch_size, max_len=max_len, template=template, head=head,
                        **kw, **columns)

  fn.__name__ = "reward_model:" + os.path.basename(os.path.normpath(os.fspath(checkpoint_dir)))
  return fn


@REWARD_FNS.register("reward_model_ensemble", choices={"aggregation": ENSEMBLE_AGGREGATIONS})
def reward_model_ensemble(prompts: Sequence[Any], completions: Sequence[Any], *,
                          checkpoints: Sequence[str], aggregation: str = "mean",
                          lam: float = 1.0, **kw: Any) -> list[float]:
  """Aggregated score of several reward models (kw as for `reward_model`), by
  `rlx.ensemble.ensemble_aggregate` (a model's missing score is ignored)."""
  check_choice(aggregation, ENSEMBLE_AGGREGATIONS, "aggregation", "reward_model_ensemble")
  if isinstance(checkpoints, (str, os.PathLike)) or not checkpoints:
    raise ValueError("reward_model_ensemble needs `checkpoints`: a list of reward-model dirs.")
  scores = [reward_model(prompts, completions, checkpoint=c, **kw) for c in checkpoints]
  scores_NM = np.asarray(scores, np.float32).T
  return [float(x) for x in np.asarray(ensemble_aggregate(scores_NM, aggregation, lam))]


def make_ensemble_fn(checkpoints: Sequence[str | os.PathLike], aggregation: str = "mean",
                     lam: float = 1.0, **kw: Any) -> Callable[..., list]:
  """fn(prompts, completions, **columns) -> aggregated scores of several reward models."""
  check_choice(aggregation, ENSEMBLE_AGGREGATIONS, "aggregation", "make_ensemble_fn")
  paths = [os.fspath(c) for c in checkpoints]

  def fn(prompts, completions, **columns):
    return reward_model_ensemble(prompts, completions, checkpoints=paths,
                                 aggregation=aggregation, lam=lam, **kw, **columns)

  fn.__name__ = f"reward_model_ensemble:{aggregation}"
  return fn


# ---------------------------------------------------------------------------
# Pairwise judge (Pref-GRPO)
# ---------------------------------------------------------------------------

def bt_probabilities(r_G: Any, temperature: float = 1.0) -> np.ndarray:
  """P[i, j] = sigmoid((r_i - r_j) / temperature) (Bradley-Terry), [R, R]."""
  r = np.asarray(r_G, np.float64)
  return (1.0 / (1.0 + np.exp(-(r[:, None] - r[None, :]) / temperature))).astype(np.float32)


def outcome_matrix(p_RR: Any, tie_margin: float = 0.0) -> np.ndarray:
  """O [R, R] from P(i beats j): 1 if p - 0.5 > 0, 0 if < 0, 0.5 if |p - 0.5| < tie_margin.

  p exactly 0.5 is a tie. Only the upper triangle of p is read; the lower one
  is 1 - its transpose, so O[i, j] + O[j, i] = 1 exactly. Diagonal: NaN
  (no comparison).
  """
  p = np.asarray(p_RR, np.float64)
  r = p.shape[-1]
  if p.shape != (r, r):
    raise ValueError(f"p_RR must be square [R, R], got shape {list(p.shape)}.")
  d = p - 0.5
  o = np.where((np.abs(d) < tie_margin) | (d == 0), 0.5, np.where(d > 0, 1.0, 0.0))
  o = np.where(np.triu(np.ones((r, r), bool), 1), o, 1.0 - o.T)
  o[np.diag_indices(r)] = np.nan
  return o.astype(np.float32)


def win_rates(o_RR: np.ndarray) -> np.ndarray:
  """Pref-GRPO win rate of each member: mean over its comparisons (NaN skipped)."""
  o = np.asarray(o_RR, np.float64)
  has = ~np.isnan(o)
  return (np.where(has, o, 0).sum(-1) / np.maximum(has.sum(-1), 1)).astype(np.float32)


class PairwiseJudge:
  """Outcome matrices O [R, R] for Pref-GRPO from a reward or preference model.

  mode 'reward': a scalar reward model scores every completion;
    P(i beats j) = sigmoid((r_i - r_j) / temperature).
  mode 'pair': a sequence-classification model reads one text per ordered pair
    (`pair_template` with {prompt}, {a}, {b}) and gives q(a beats b):
    sigmoid(s) for 1 label, softmax(s)[1] for 2 labels (label 1 = A better),
    softmax(s)[2] + softmax(s)[1] / 2 for 3 labels (B better, tie, A better).
    With both_orders (default) P(i beats j) = (q(i, j) + 1 - q(j, i)) / 2,
    which cancels position bias; otherwise P(i, j) = q(i, j) for i < j.
  Ties: |P - 0.5| < tie_margin.
  """

  def __init__(self, model: RewardModel | str | os.PathLike, *, mode: str = "reward",
               tie_margin: float = 0.0, temperature: float = 1.0, head: int = 0,
               pair_template: str = PAIR_TEMPLATE, both_orders: bool = True,
               batch_size: int = 8, max_len: int | None = None, template: str | None = None,
               dtype: Any = None):
    check_choice(mode, JUDGE_MODES, "mode", "PairwiseJudge")
    if not 0.0 <= tie_margin <= 0.5:
      raise ValueError(f"tie_margin must be in [0, 0.5], got {tie_margin}.")
    if mode == "pair" and not all(k in pair_template for k in ("{prompt}", "{a}", "{b}")):
      raise ValueError(f"pair_template needs {{prompt}}, {{a}} and {{b}}; got {pair_template!r}.")
    self.model = model if isinstance(model, RewardModel) else get_reward_model(model, dtype=dtype)
    if mode == "pair" and self.model.num_labels not in (1, 2, 3):
      raise ValueError(f"A pair judge needs 1, 2 or 3 labels, the model has "
                       f"{self.model.num_labels}.")
    self.mode, self.tie_margin, self.temperature, self.head = mode, tie_margin, temperature, head
    self.pair_template, self.both_orders = pair_template, both_orders
    self.batch_size, self.max_len, self.template = batch_size, max_len, template

  def _pair_q(self, scores_NL: np.ndarray) -> np.ndarray:
    s = scores_NL.astype(np.float64)
    if s.shape[-1] == 1:
      return 1.0 / (1.0 + np.exp(-s[:, 0]))
    e = np.exp(s - s.max(-1, keepdims=True))
    p = e / e.sum(-1, keepdims=True)
    return p[:, 1] if s.shape[-1] == 2 else p[:, 2] + 0.5 * p[:, 1]

  def _group_probs(self, groups: list[tuple[Any, list[Any]]]) -> list[np.ndarray]:
    """P [R, R] of each (prompt, completions) group, all scored in one batched call."""
    if self.mode == "reward":
      prompts = [p for p, cs in groups for _ in cs]
      comps = [c for _, cs in groups for c in cs]
      r = head_reward(self.model.score(prompts, comps, template=self.template,
                                       batch_size=self.batch_size, max_len=self.max_len),
                      self.head)
      out, k = [], 0
      for _, cs in groups:
        out.append(bt_probabilities(r[k:k + len(cs)], self.temperature))
        k += len(cs)
      return out
    texts, index = [], []
    for g, (p, cs) in enumerate(groups):
      p = _prompt_text(p, "pair")
      cs = [completion_text(c) for c in cs]
      for i in range(len(cs)):
        for j in range(len(cs)):
          if i != j and (self.both_orders or i < j):
            texts.append(self.pair_template.format(prompt=p, a=cs[i], b=cs[j]))
            index.append((g, i, j))
    q = np.zeros(0)
    if texts:
      tok = self.model.tokenizer
      seqs = [list(s) for s in tok(texts, add_special_tokens=True)["input_ids"]]
      if self.model.setting("append_eos", None, True) and tok.eos_token_id is not None:
        seqs = [s + [int(tok.eos_token_id)] for s in seqs]
      q = self._pair_q(self.model.score_ids(seqs, batch_size=self.batch_size,
                                            max_len=self.max_len))
    out = [np.full((len(cs), len(cs)), 0.5) for _, cs in groups]
    qd = {key: v for key, v in zip(index, q)}
    for g, i, j in index:
      if i < j:
        p_ij = qd[(g, i, j)]
        if self.both_orders:
          p_ij = 0.5 * (p_ij + 1.0 - qd[(g, j, i)])
        out[g][i, j], out[g][j, i] = p_ij, 1.0 - p_ij
    return [o.astype(np.float32) for o in out]

  def probabilities(self, prompt: Any, completions: Sequence[Any]) -> np.ndarray:
    """P [R, R]: probability that completion i beats completion j."""
    return self._group_probs([(prompt, list(completions))])[0]

  def judge_group(self, prompt: Any, completions: Sequence[Any]) -> np.ndarray:
    """O [R, R] in {1, 0.5, 0}, NaN diagonal (see `outcome_matrix`)."""
    return outcome_matrix(self.probabilities(prompt, completions), self.tie_margin)

  def judge_batch(self, prompts: Sequence[Any], completions: Sequence[Any], *,
                  group_size: int | None = None, group_ids_N: Any = None) -> np.ndarray:
    """pairwise_NM [N, M] for `AdvantageInputs.pairwise_NM` (rlx.advantages pref_grpo).

    Groups are given by group_ids_N, or are consecutive blocks of group_size
    rows. Row i, column m holds O[i, m-th member of i's group] (members in row
    order; M = the largest group): NaN for i itself and for unused columns.
    A group's prompt is that of its first row.
    """
    n = len(completions)
    if len(prompts) != n:
      raise ValueError(f"{len(prompts)} prompts but {n} completions.")
    if group_ids_N is None:
      if not group_size or n % group_size:
        raise ValueError(f"judge_batch needs group_ids_N, or a group_size dividing the "
                         f"{n} completions (got group_size={group_size}).")
      group_ids_N = np.arange(n) // group_size
    gids = np.asarray(group_ids_N)
    members = [np.flatnonzero(gids == g) for g in np.unique(gids)]
    probs = self._group_probs([(prompts[m[0]], [completions[i] for i in m]) for m in members])
    width = max(len(m) for m in members)
    out = np.full((n, width), np.nan, np.float32)
    for m, p in zip(members, probs):
      out[m, :len(m)] = outcome_matrix(p, self.tie_margin)
    return out


def make_judge(checkpoint: str | os.PathLike | RewardModel, **kw: Any) -> PairwiseJudge:
  """A PairwiseJudge over a reward-model dir (kw: see PairwiseJudge)."""
  return PairwiseJudge(checkpoint, **kw)


def judge_group(judge: PairwiseJudge, prompt: Any, completions: Sequence[Any]) -> np.ndarray:
  """O [R, R] of one group (functional form of `PairwiseJudge.judge_group`)."""
  return judge.judge_group(prompt, completions)
