"""Estimator inputs that the RL loop produces each round (`config.advantage.inputs`).

    config.advantage.inputs = {
        "pairwise_NM": {"name": "pairwise", "fn": "shorter"},          # Pref-GRPO
        "phase_mask_NZT": {"name": "phase_split", "delimiters": ["</think>"]},  # F-GRPO
        "turn_scores_NU": {"name": "turn_scores", "delimiter": "\\n", "max_turns": 4,
                           "reward": "arith/correct"},                # MAPO
        "turn_ids_NT": {"name": "turn_ids", "delimiter": "\\n", "max_turns": 4},
        "agent_ids_N": {"name": "agent_parser", "patterns": ["^planner:"]},  # Dr. MAS
        "reference_rewards_GMK": {"name": "reference_samples", "samples": 4},  # log_sigmoid,
    }                                                                 # calibrate

Each key is an `AdvantageInputs` field (or a transform's extras key), each
value a producer from `INPUTS` with its options. A producer runs on the host
after scoring, on this process's rows, and returns one array row per
completion; the loop passes it to the jitted advantage step with the data
columns (rlx/advantages/inputs.py `column_inputs`). Token-level inputs
([n, Z, C], [n, C]) place tokens by the text of each completion token
(`tokenizer.decode([id])`): a delimiter is found in the concatenation of the
token texts, and a token belongs to what follows a delimiter when it starts
at or after the delimiter's end.
"""
from __future__ import annotations

import dataclasses
import functools
import re
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from rlx.registry import Registry
from rlx.rewards.registry import PAIRWISE_FNS, REWARD_FNS
from rlx.train.scoring import RewardSpec, score

INPUTS = Registry("advantage input producer")


@dataclasses.dataclass(frozen=True)
class Sizes:
  """Static sizes of a round's inputs: n completions, R per prompt, C completion
  tokens, K rewards."""
  n: int
  r: int
  c: int
  k: int


@dataclasses.dataclass
class Round:
  """What the producers read of one sampling round (this process's rows)."""
  prompts: list                  # [n] the prompt of each completion
  completions: list[str]         # [n] decoded completions
  completion_ids: list[list[int]]  # [n] completion tokens, padding removed
  columns: Mapping[str, list]    # the dataset columns, one value per completion
  rewards_NK: np.ndarray
  reward_names: tuple[str, ...]
  sizes: Sizes
  tokenizer: Any
  step: int
  # m -> rewards [n / R * m, K] of m reference-policy completions per prompt
  # (prompt-major), or None without a reference policy.
  sample_reference: Callable[[int], np.ndarray] | None = None


def _producer(name: str, shape: Callable[[Mapping[str, Any], Sizes], tuple[int, ...]],
              dtype: Any, check: Callable[[Mapping[str, Any]], Any] | None = None):
  """Registers a producer `fn(round, **options) -> array` with its output shape,
  dtype and a start-up check of its options (registry names they hold)."""
  def register(fn):
    fn.shape, fn.dtype, fn.check = shape, np.dtype(dtype), check
    return INPUTS.register(name)(fn)
  return register


def check_inputs(cfg_inputs: Mapping[str, Any]) -> dict[str, tuple[Callable, dict[str, Any]]]:
  """config.advantage.inputs -> {key: (producer, options)}; errors name the key."""
  out = {}
  for key, spec in dict(cfg_inputs).items():
    where = f"config.advantage.inputs.{key}"
    if not hasattr(spec, "keys") or "name" not in spec:
      raise ValueError(f"{where}: a producer is {{'name': NAME, **options}}, got {spec!r}. "
                       f"Valid names: {', '.join(INPUTS.names())}.")
    options = {k: v for k, v in dict(spec).items() if k != "name"}
    try:
      fn = INPUTS.check_options(spec["name"], options)
      if fn.check is not None:
        fn.check(options)
    except (KeyError, TypeError, ValueError) as e:
      raise type(e)(f"{where}: {e.args[0] if e.args else e}") from None
    out[key] = (fn, options)
  return out


def placeholders(cfg_inputs: Mapping[str, Any], sizes: Sizes) -> dict[str, np.ndarray]:
  """Zero arrays of the shapes and dtypes the configured producers return (start-up checks)."""
  return {key: np.zeros(fn.shape(options, sizes), fn.dtype)
          for key, (fn, options) in check_inputs(cfg_inputs).items()}


def produce(inputs: Mapping[str, tuple[Callable, dict[str, Any]]], rnd: Round
            ) -> dict[str, np.ndarray]:
  """Runs every configured producer on a round: {key: [n, ...] array}."""
  out = {}
  for key, (fn, options) in inputs.items():
    value = np.asarray(fn(rnd, **options), fn.dtype)
    expected = fn.shape(options, rnd.sizes)
    if value.shape != expected:
      raise ValueError(f"config.advantage.inputs.{key}: producer returned shape "
                       f"{value.shape}, expected {expected}.")
    out[key] = value
  return out


# ---- token positions --------------------------------------------------------


@functools.lru_cache(maxsize=1 << 17)
def _piece(tokenizer: Any, token_id: int) -> str:
  return tokenizer.decode([token_id])


def _token_starts(tokenizer: Any, ids: Sequence[int]) -> tuple[str, np.ndarray]:
  """(text, start character of each token): the concatenated token texts."""
  pieces = [_piece(tokenizer, int(i)) for i in ids]
  ends = np.cumsum([len(p) for p in pieces]).astype(np.int64)
  return "".join(pieces), ends - np.asarray([len(p) for p in pieces], np.int64)


def _delimiter_ends(text: str, delimiter: str) -> list[int]:
  """End positions of the non-overlapping occurrences of `delimiter` in `text`."""
  return [m.end() for m in re.finditer(re.escape(delimiter), text)] if delimiter else []


# ---- F-GRPO: phases ---------------------------------------------------------


@_producer("phase_split", lambda o, s: (s.n, len(o["delimiters"]) + 1, s.c), bool)
def phase_split(rnd: Round, *, delimiters: Sequence[str]) -> np.ndarray:
  """phase_mask_NZT [n, Z, C], Z = len(delimiters) + 1 (e.g. ["</think>"]:
  reasoning, then answer): phase z > 0 starts after the first occurrence of
  delimiters[z - 1] that follows the previous phase's start; a completion
  without it stays in the earlier phase. Padding tokens are in no phase."""
  out = np.zeros((rnd.sizes.n, len(delimiters) + 1, rnd.sizes.c), bool)
  for i, ids in enumerate(rnd.completion_ids):
    text, starts = _token_starts(rnd.tokenizer, ids)
    bounds, pos = [], 0
    for d in delimiters:
      at = text.find(d, pos) if d else -1
      if at < 0:
        break
      pos = at + len(d)
      bounds.append(pos)
    phase = np.searchsorted(np.asarray(bounds, np.int64), starts, side="right")
    out[i, phase, np.arange(len(ids))] = True
  return out


# ---- MAPO: turns --------------------------------------------------------------


def _turn_texts(text: str, delimiter: str) -> list[str]:
  """`text` split after each `delimiter` (kept with its turn); no empty last turn."""
  ends = _delimiter_ends(text, delimiter)
  cuts = [0] + ends + ([len(text)] if not ends or ends[-1] < len(text) else [])
  return [text[a:b] for a, b in zip(cuts, cuts[1:])]


@_producer("turn_ids", lambda o, s: (s.n, s.c), np.int32)
def turn_ids(rnd: Round, *, delimiter: str, max_turns: int) -> np.ndarray:
  """turn_ids_NT [n, C]: a token's turn is the number of `delimiter` ends at or
  before its start; -1 from turn max_turns on and on padding."""
  out = np.full((rnd.sizes.n, rnd.sizes.c), -1, np.int32)
  for i, ids in enumerate(rnd.completion_ids):
    text, starts = _token_starts(rnd.tokenizer, ids)
    turn = np.searchsorted(np.asarray(_delimiter_ends(text, delimiter), np.int64), starts,
                           side="right")
    out[i, :len(ids)] = np.where(turn < max_turns, turn, -1)
  return out


@_producer("turn_scores", lambda o, s: (s.n, o["max_turns"]), np.float32,
           check=lambda o: REWARD_FNS.get(o["reward"]))
def turn_scores(rnd: Round, *, delimiter: str, max_turns: int, reward: str,
                kwargs: Mapping[str, Any] | None = None) -> np.ndarray:
  """turn_scores_NU [n, U = max_turns]: the reward function `reward` (a
  REWARD_FNS name, with `kwargs`) on each turn's text (turns as in
  `turn_ids`), with the prompt and dataset columns of its completion; NaN for
  turns a completion does not have (or a missing reward)."""
  fn = REWARD_FNS.get(reward)
  if kwargs:
    fn = functools.partial(fn, **dict(kwargs))
  turns = [_turn_texts(_token_starts(rnd.tokenizer, ids)[0], delimiter)[:max_turns]
           for ids in rnd.completion_ids]
  rows = [(i, u) for i, ts in enumerate(turns) for u in range(len(ts))]
  out = np.full((rnd.sizes.n, max_turns), np.nan, np.float32)
  if rows:
    values = score(RewardSpec(reward, fn, 1.0), [rnd.prompts[i] for i, _ in rows],
                   [turns[i][u] for i, u in rows],
                   {k: [v[i] for i, _ in rows] for k, v in rnd.columns.items()}, step=rnd.step)
    out[tuple(np.asarray(rows).T)] = values
  return out


# ---- Dr. MAS: agents ----------------------------------------------------------


@_producer("agent_parser", lambda o, s: (s.n,), np.int32)
def agent_parser(rnd: Round, *, patterns: Sequence[str], default: int = 0) -> np.ndarray:
  """agent_ids_N [n]: the index of the first regex of `patterns` that
  `re.search` finds in the completion (one pattern per agent, e.g. a role
  tag), `default` when none matches."""
  compiled = [re.compile(p) for p in patterns]
  return np.asarray([next((a for a, p in enumerate(compiled) if p.search(c)), default)
                     for c in rnd.completions], np.int32)


# ---- Pref-GRPO: pairwise outcomes ---------------------------------------------


def _outcomes(p_RR: np.ndarray, tie_margin: float) -> np.ndarray:
  from rlx.rewards.reward_models import outcome_matrix  # pylint: disable=g-import-not-at-top
  return outcome_matrix(p_RR, tie_margin)


@_producer("pairwise", lambda o, s: (s.n, s.r), np.float32,
           check=lambda o: o.get("fn") is None or PAIRWISE_FNS.get(o["fn"]))
def pairwise(rnd: Round, *, fn: str | None = None, reward: str | None = None,
             kwargs: Mapping[str, Any] | None = None, temperature: float = 1.0,
             tie_margin: float = 0.0) -> np.ndarray:
  """pairwise_NM [n, M = R]: row i, column j holds the outcome (1 win, 0.5
  tie, 0 loss) of completion i against member j of its group, NaN for i
  itself. P(i beats j) comes from the pairwise function `fn` (PAIRWISE_FNS,
  called once per pair i < j with `kwargs`; P(j beats i) = 1 - P) or from
  the configured reward `reward` of this round (Bradley-Terry:
  sigmoid((r_i - r_j) / temperature); a missing reward gives NaN outcomes).
  Outcomes: `outcome_matrix(P, tie_margin)` (rlx/rewards/reward_models.py)."""
  if (fn is None) == (reward is None):
    raise ValueError("pairwise: set exactly one of fn (a pairwise function: "
                     f"{', '.join(PAIRWISE_FNS.names())}) and reward (a reward name).")
  r_n, n = rnd.sizes.r, rnd.sizes.n
  out = np.full((n, r_n), np.nan, np.float32)
  if reward is not None:
    if reward not in rnd.reward_names:
      raise KeyError(f"pairwise: unknown reward {reward!r}; valid: {', '.join(rnd.reward_names)}.")
    values = rnd.rewards_NK[:, rnd.reward_names.index(reward)].astype(np.float64)
  else:
    pref = PAIRWISE_FNS.get(fn)
    pref = functools.partial(pref, **dict(kwargs or {}))
  for g in range(n // r_n):
    rows = slice(g * r_n, (g + 1) * r_n)
    if reward is not None:
      r = values[rows]
      p = 1.0 / (1.0 + np.exp(-(r[:, None] - r[None, :]) / temperature))
      o = _outcomes(np.nan_to_num(p, nan=0.5), tie_margin)
      o[np.isnan(r)] = np.nan
      o[:, np.isnan(r)] = np.nan
    else:
      p = np.full((r_n, r_n), 0.5)
      for i in range(r_n):
        for j in range(i + 1, r_n):
          p[i, j] = float(pref(rnd.prompts[g * r_n], rnd.completions[g * r_n + i],
                               rnd.completions[g * r_n + j]))
          p[j, i] = 1.0 - p[i, j]
      o = _outcomes(p, tie_margin)
    out[rows] = o
  return out


@functools.lru_cache(maxsize=4)
def _judge(checkpoint: str, options: tuple[tuple[str, Any], ...]):
  from rlx.rewards.reward_models import make_judge  # pylint: disable=g-import-not-at-top
  return make_judge(checkpoint, **dict(options))


@_producer("judge", lambda o, s: (s.n, s.r), np.float32)
def judge(rnd: Round, *, checkpoint: str, options: Mapping[str, Any] | None = None
          ) -> np.ndarray:
  """pairwise_NM [n, M = R] from a reward- or preference-model judge on each
  group (`make_judge(checkpoint, **options)`, rlx/rewards/reward_models.py:
  mode 'reward' or 'pair', tie_margin, ...); loaded once per process."""
  j = _judge(str(checkpoint), tuple(sorted(dict(options or {}).items())))
  return j.judge_batch(rnd.prompts, rnd.completions, group_size=rnd.sizes.r)


# ---- reference rewards (log_sigmoid, calibrate) --------------------------------


@_producer("reference_samples", lambda o, s: (s.n, o["samples"], s.k), np.float32)
def reference_samples(rnd: Round, *, samples: int) -> np.ndarray:
  """reference_rewards_GMK [n, M = samples, K]: the loop samples `samples`
  completions of each prompt with the reference params (the run's sampling
  settings) and scores them with config.rewards; every row of a group carries
  its prompt's [M, K] (the advantage step reads one row per group). Needs a
  reference policy (config.ref.source 'initial' or 'checkpoint')."""
  if rnd.sample_reference is None:
    raise ValueError("reference_samples needs a reference policy; config.ref.source is 'none'.")
  groups = rnd.sizes.n // rnd.sizes.r
  r_GMK = np.asarray(rnd.sample_reference(samples), np.float32).reshape(groups, samples, -1)
  return np.repeat(r_GMK, rnd.sizes.r, axis=0)
