"""Host-side reward scoring: TRL-signature reward functions in threads.

Each configured reward is `fn(prompts, completions, **columns) -> list[float|None]`.
A `None`, a non-finite value or an exception gives a missing reward (NaN) for
that sample; `errors == "fatal"` re-raises instead. A function that raises on
the whole batch is retried one sample at a time, so one bad sample does not
cost the others their reward.
"""
from __future__ import annotations

import concurrent.futures as cf
import dataclasses
import functools
import logging
import math
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


def _call_one(spec: RewardSpec, prompts, completions, columns, errors: str):
  n = len(prompts)
  try:
    out = spec.fn(prompts, completions, **columns)
    out = list(out)
    if len(out) != n:
      raise RewardError(f"reward {spec.name!r} returned {len(out)} values for {n} completions")
    vals = [_to_float(v) for v in out]
    return vals, 0
  except Exception as e:  # noqa: BLE001 - user code
    if errors == "fatal":
      raise RewardError(f"reward {spec.name!r} raised: {e!r}") from e
    logging.warning("reward %r raised on the batch (%r); scoring samples one by one.", spec.name, e)
  vals, raised = [], 0
  for i in range(n):
    cols = {k: [v[i]] for k, v in columns.items()}
    try:
      v = list(spec.fn([prompts[i]], [completions[i]], **cols))
      vals.append(_to_float(v[0]) if v else math.nan)
    except Exception:  # noqa: BLE001
      vals.append(math.nan)
      raised += 1
  return vals, raised


class Scorer:
  """Scores batches with all configured rewards, one thread per reward."""

  def __init__(self, specs: Sequence[RewardSpec], *, threads: int = 4, errors: str = "missing"):
    self.specs = list(specs)
    self.errors = errors
    self.pool = cf.ThreadPoolExecutor(max_workers=max(1, threads), thread_name_prefix="reward")

  @property
  def names(self) -> tuple[str, ...]:
    return tuple(s.name for s in self.specs)

  @property
  def weights(self) -> np.ndarray:
    return np.asarray([s.weight for s in self.specs], np.float32)

  def submit(self, prompts: list[str], completions: list[str], columns: Mapping[str, list]):
    futs = [self.pool.submit(_call_one, s, prompts, completions, dict(columns), self.errors)
            for s in self.specs]
    return futs

  def collect(self, futs) -> tuple[np.ndarray, dict[str, float]]:
    cols, metrics = [], {}
    for spec, f in zip(self.specs, futs):
      vals, raised = f.result()
      arr = np.asarray(vals, np.float32)
      cols.append(arr)
      metrics[f"reward/{spec.name}/missing"] = float(np.isnan(arr).sum())
      metrics[f"reward/{spec.name}/raised"] = float(raised)
    return np.stack(cols, axis=1), metrics

  def __call__(self, prompts, completions, columns):
    return self.collect(self.submit(prompts, completions, columns))

  def close(self):
    self.pool.shutdown(wait=False, cancel_futures=True)
