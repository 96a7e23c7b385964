"""Shared pieces of the built-in synthetic tasks.

A task is a class registered in `TASKS`; `TASKS.get(name)(**options)` gives an
instance with

  make_examples(seed, n, split) -> list[dict]   # 'prompt', 'demo', reward columns
  corrupt(demo, rng, rate, row=None) -> str     # imperfect demonstration
  make_sft_examples(seed, n, rate, split) -> rows with a 'completion' column
  default_rewards: dict[str, float]             # REWARD_FNS names -> weights

Rows are generated deterministically from (task, split, seed). The split of a
problem is decided by a hash of its key (the underlying problem, not the seed),
so test problems never occur in train for any seed and any n.
"""
from __future__ import annotations

import hashlib
import random
from typing import Any, Callable

import numpy as np

from rlx.registry import Registry

TASKS = Registry("task")
SPLITS = ("train", "test")


def split_of(key: str, test_fraction: float) -> str:
  """'test' for a stable hash share `test_fraction` of problem keys, else 'train'."""
  h = int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "big")
  return "test" if h / 2.0**64 < test_fraction else "train"


def as_random(rng: random.Random | np.random.Generator | int | None) -> random.Random:
  """A `random.Random` from a Random, a numpy Generator (consumes one draw) or a seed."""
  if isinstance(rng, random.Random):
    return rng
  if isinstance(rng, np.random.Generator):
    return random.Random(int(rng.integers(0, 2**63 - 1)))
  return random.Random(rng)


class Task:
  """Base class: deterministic, split-disjoint row generation."""

  name: str = ""
  test_fraction: float = 0.125
  default_rewards: dict[str, float] = {}

  def sample_problem(self, rng: random.Random) -> tuple[str, dict[str, Any]]:
    """Returns (problem key, row) for one random problem. Row has 'prompt', 'demo'."""
    raise NotImplementedError

  def corrupt(self, demo: str, rng: Any, rate: float,
              row: dict[str, Any] | None = None) -> str:
    """With probability `rate`, a flawed version of `demo` (else `demo`)."""
    raise NotImplementedError

  def make_examples(self, seed: int, n: int, split: str = "train") -> list[dict[str, Any]]:
    """`n` rows with distinct prompts from `split`, deterministic in `seed`."""
    if split not in SPLITS:
      raise ValueError(f"Unknown split {split!r}; valid choices: {', '.join(SPLITS)}.")
    rng = random.Random(f"rlx/{self.name}/{split}/{int(seed)}")
    rows: list[dict[str, Any]] = []
    seen: set[str] = set()
    attempts, max_attempts = 0, 50 * n + 1000
    while len(rows) < n:
      attempts += 1
      if attempts > max_attempts:
        raise ValueError(
            f"Task {self.name!r} found only {len(rows)} distinct {split} prompts "
            f"after {max_attempts} draws; ask for fewer than n={n}.")
      key, row = self.sample_problem(rng)
      if split_of(key, self.test_fraction) != split or row["prompt"] in seen:
        continue
      seen.add(row["prompt"])
      row["task"] = self.name
      rows.append(row)
    return rows

  def make_sft_examples(self, seed: int, n: int, rate: float,
                        split: str = "train") -> list[dict[str, Any]]:
    """`make_examples` rows plus 'completion' = corrupt(demo) at `rate`."""
    rows = self.make_examples(seed, n, split)
    rng = random.Random(f"rlx/{self.name}/{split}/{int(seed)}/corrupt")
    for row in rows:
      row["completion"] = self.corrupt(row["demo"], rng, rate, row=row)
    return rows

  def rewards(self) -> dict[str, Callable[..., list[float | None]]]:
    """The registered reward functions of `default_rewards`."""
    from rlx.rewards.registry import REWARD_FNS  # pylint: disable=g-import-not-at-top
    return {k: REWARD_FNS.get(k) for k in self.default_rewards}
