"""Host-side reward scoring: reward functions called as TRL calls them, in threads.

Each configured reward is called by keyword, as TRL's GRPOTrainer does:

    fn(prompts=..., completions=..., completion_ids=..., trainer_state=...,
       log_extra=..., log_metric=..., **columns) -> list[float | None]

A function receives only the keywords it names, unless it takes `**kwargs`
(then it receives all of them; rlx's own `**columns` receives the dataset
columns only); one whose first two parameters are named none of these (an
older `fn(p, c, **columns)`) gets prompts and completions by position.
`async def` functions are awaited. `trainer_state` carries `global_step`
(and `max_steps`, `epoch`); `log_metric(name, value)` values are averaged
into the metric `reward/<reward>/<name>`; `log_extra(column, values)` adds the
mean of its numeric values as `reward/<reward>/extra/<column>` (others are
dropped). A `None`, a non-finite value or an exception gives a missing reward
(NaN) for that sample; `errors == "fatal"` re-raises instead. A function that
raises on the whole batch is retried one sample at a time, so one bad sample
does not cost the others their reward.
"""
from __future__ import annotations

import asyncio
import concurrent.futures as cf
import dataclasses
import functools
import inspect
import logging
import math
from collections import defaultdict
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from rlx.rewards.registry import REWARD_FNS


@dataclasses.dataclass(frozen=True)
class RewardSpec:
  name: str
  fn: Callable[..., list]
  weight: float


def build_rewards(cfg_rewards: Mapping[str, Any]) -> list[RewardSpec]:
  """config.rewards (name -> {fn, weight, kwargs}) -> RewardSpecs, in order."""
  specs = []
  for name, r in cfg_rewards.items():
    fn_name = r["fn"]
    if callable(fn_name):
      fn = fn_name
    else:
      fn = REWARD_FNS.get(fn_name)
    kwargs = dict(r.get("kwargs", None) or {})
    if kwargs:
      fn = functools.partial(fn, **kwargs)
    specs.append(RewardSpec(name=name, fn=fn, weight=float(r.get("weight", 1.0))))
  return specs


class RewardError(RuntimeError):
  pass


def _to_float(v: Any) -> float:
  if v is None:
    return math.nan
  try:
    f = float(v)
  except (TypeError, ValueError):
    return math.nan
  return f if math.isfinite(f) else math.nan


@dataclasses.dataclass
class TrainerState:
  """What TRL's `trainer_state` gives a reward function that rlx knows."""
  global_step: int = 0
  max_steps: int = 0
  epoch: float = 0.0


def completion_id_lists(tokens_NC: Any, mask_NC: Any) -> list[list[int]]:
  """Completion token ids as TRL passes them: one list per completion, padding removed."""
  tokens_NC, mask_NC = np.asarray(tokens_NC), np.asarray(mask_NC, bool)
  return [row[m].tolist() for row, m in zip(tokens_NC, mask_NC)]


TRL_KEYWORDS = frozenset({"prompts", "completions", "completion_ids", "trainer_state",
                          "log_extra", "log_metric"})


def _calling(fn: Callable[..., Any]) -> tuple[bool, frozenset[str], str | None]:
  """(by keyword, named keyword parameters, name of the **parameter) of a reward function.

  Positional only when its first two parameters are positional and named
  none of TRL's keywords (rlx's older `fn(p, c, **columns)`)."""
  try:
    params = list(inspect.signature(fn).parameters.values())
  except (TypeError, ValueError):  # no signature: the old positional convention
    return False, frozenset(), "columns"
  var_kw = next((p.name for p in params if p.kind is inspect.Parameter.VAR_KEYWORD), None)
  named = frozenset(p.name for p in params if p.kind in (
      inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY))
  positional = [p for p in params[:2] if p.kind in (
      inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)]
  legacy = len(positional) == 2 and not {p.name for p in positional} & TRL_KEYWORDS
  return not legacy, named, var_kw


async def _await(x):
  return await x


def _invoke(fn: Callable[..., Any], prompts, completions, extras: Mapping[str, Any]) -> list:
  """Calls fn with the keywords it takes. A `**columns` parameter (rlx's name)
  receives the dataset columns only; any other `**kwargs` receives everything."""
  by_keyword, named, var_kw = _calling(fn)
  if by_keyword:
    extras = dict(extras, prompts=prompts, completions=completions)
  if var_kw is None:
    kw = {k: v for k, v in extras.items() if k in named}
  elif var_kw == "columns":
    kw = {k: v for k, v in extras.items() if k in named or k not in TRL_KEYWORDS}
  else:
    kw = dict(extras)
  out = fn(**kw) if by_keyword else fn(prompts, completions, **kw)
  if inspect.isawaitable(out):  # each reward runs in its own thread: no loop is running here
    out = asyncio.run(_await(out))
  return list(out)


class _Logs:
  """log_metric / log_extra hooks of one scoring call."""

  def __init__(self):
    self.metrics: dict[str, list[float]] = defaultdict(list)
    self.extras: dict[str, list[float]] = defaultdict(list)

  def log_metric(self, name: str, value: float) -> None:
    self.metrics[str(name)].append(_to_float(value))

  def log_extra(self, column: str, values: Sequence[Any]) -> None:
    for v in values:
      if isinstance(v, (int, float, np.number)) and not isinstance(v, bool):
        self.extras[str(column)].append(float(v))

  def summary(self, reward: str) -> dict[str, float]:
    out = {f"reward/{reward}/{k}": float(np.nanmean(v)) for k, v in self.metrics.items() if v}
    out.update({f"reward/{reward}/extra/{k}": float(np.nanmean(v))
                for k, v in self.extras.items() if v})
    return out


def _call_one(spec: RewardSpec, prompts, completions, columns, errors: str,
              completion_ids, state: TrainerState):
  n = len(prompts)
  logs = _Logs()

  def extras(cols, ids):
    return dict(cols, completion_ids=ids, trainer_state=state, log_extra=logs.log_extra,
                log_metric=logs.log_metric)

  try:
    out = _invoke(spec.fn, prompts, completions, extras(columns, completion_ids))
    if len(out) != n:
      raise RewardError(f"reward {spec.name!r} returned {len(out)} values for {n} completions")
    vals = [_to_float(v) for v in out]
    return vals, 0, logs.summary(spec.name)
  except Exception as e:  # noqa: BLE001 - user code
    if errors == "fatal":
      raise RewardError(f"reward {spec.name!r} raised: {e!r}") from e
    logging.warning("reward %r raised on the batch (%r); scoring samples one by one.", spec.name, e)
  logs = _Logs()
  vals, raised = [], 0
  for i in range(n):
    cols = {k: [v[i]] for k, v in columns.items()}
    ids = None if completion_ids is None else [completion_ids[i]]
    try:
      v = _invoke(spec.fn, [prompts[i]], [completions[i]], extras(cols, ids))
      vals.append(_to_float(v[0]) if v else math.nan)
    except Exception:  # noqa: BLE001
      vals.append(math.nan)
      raised += 1
  return vals, raised, logs.summary(spec.name)


def score(spec: RewardSpec, prompts: list, completions: list, columns: Mapping[str, list], *,
          errors: str = "missing", step: int = 0) -> np.ndarray:
  """[n] values of one reward on a batch, called as `Scorer` calls it (NaN: missing)."""
  vals, _, _ = _call_one(spec, prompts, completions, columns, errors, None,
                         TrainerState(global_step=int(step)))
  return np.asarray(vals, np.float32)


class Scorer:
  """Scores batches with all configured rewards, one thread per reward."""

  def __init__(self, specs: Sequence[RewardSpec], *, threads: int = 4, errors: str = "missing",
               max_steps: int = 0):
    self.specs = list(specs)
    self.errors = errors
    self.state = TrainerState(max_steps=max_steps)
    self.pool = cf.ThreadPoolExecutor(max_workers=max(1, threads), thread_name_prefix="reward")

  @property
  def names(self) -> tuple[str, ...]:
    return tuple(s.name for s in self.specs)

  @property
  def weights(self) -> np.ndarray:
    return np.asarray([s.weight for s in self.specs], np.float32)

  def submit(self, prompts: list, completions: list, columns: Mapping[str, list], *,
             completion_ids: list[list[int]] | None = None, step: int | None = None):
    """Starts every reward on the batch; `step` sets trainer_state.global_step."""
    if step is not None:
      self.state.global_step = int(step)
    columns = {k: v for k, v in columns.items() if k not in ("prompt", "completion", "completion_ids")}
    return [self.pool.submit(_call_one, s, prompts, completions, columns, self.errors,
                             completion_ids, self.state) for s in self.specs]

  def collect(self, futs) -> tuple[np.ndarray, dict[str, float]]:
    cols, metrics = [], {}
    for spec, f in zip(self.specs, futs):
      vals, raised, logged = f.result()
      arr = np.asarray(vals, np.float32)
      cols.append(arr)
      metrics[f"reward/{spec.name}/missing"] = float(np.isnan(arr).sum())
      metrics[f"reward/{spec.name}/raised"] = float(raised)
      metrics.update(logged)
    return np.stack(cols, axis=1), metrics

  def __call__(self, prompts, completions, columns, *, completion_ids=None, step=None):
    return self.collect(self.submit(prompts, completions, columns,
                                    completion_ids=completion_ids, step=step))

  def close(self):
    self.pool.shutdown(wait=False, cancel_futures=True)
