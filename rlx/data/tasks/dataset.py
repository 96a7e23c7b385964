"""Tasks over a fixed set of problems shipped as data files (real benchmarks).

A subclass yields its raw records with `records()` -> (id, record) and turns
one into a row with `to_row(record)` (a dict with 'prompt' and reward
columns). A record that cannot be read (bad JSON, a missing field, a value of
the wrong kind: `to_row` raises) is skipped, counted and named in the log;
`skipped` maps its id to the reason. A row a task option excludes (`to_row`
raises `Filtered`, e.g. a prompt over a length limit) is counted apart, in
`filtered`; `data_metrics()` gives the counts.

Splits: a problem is held out ('test') when a stable hash of
(`split_seed`, id) falls in the `test_fraction` share, so train and test are
disjoint for every seed; `make_examples(seed, n, split)` returns up to `n`
rows of the split in an order shuffled by `seed`.
"""
from __future__ import annotations

import copy
import json
import logging
import os
import random
from typing import Any, Iterator

from rlx.data.tasks.base import SPLITS, Task, split_of

log = logging.getLogger(__name__)


def package_dir(package: str) -> str:
  """Directory of an installed package, found without importing it."""
  import importlib.util  # pylint: disable=g-import-not-at-top
  spec = importlib.util.find_spec(package)
  if spec is None or not spec.submodule_search_locations:
    raise FileNotFoundError(f"package {package!r} is not installed (pip install -e \".[real]\"; "
                            "see setup.py for the packages installed with --no-deps).")
  return list(spec.submodule_search_locations)[0]


def read_json_lines(path: str) -> Iterator[tuple[int, Any]]:
  """(line number, parsed object or the ValueError) for each non-empty line."""
  with open(path, encoding="utf-8") as f:
    for i, line in enumerate(f, 1):
      if not line.strip():
        continue
      try:
        yield i, json.loads(line)
      except ValueError as e:
        yield i, e


class Filtered(Exception):
  """Raised by `to_row` for a readable row that the task's options exclude."""


class DatasetTask(Task):
  """Base of the real-data tasks: read once, split by id, unreadable rows skipped."""

  test_fraction = 0.2
  _cache: dict[tuple[Any, ...], tuple[list[tuple[str, dict[str, Any]]], dict[str, str],
                                      dict[str, str]]] = {}

  def __init__(self, split_seed: int = 0):
    self.split_seed = int(split_seed)
    self.skipped: dict[str, str] = {}
    self.filtered: dict[str, str] = {}

  def records(self) -> Iterator[tuple[str, Any]]:
    """(id, raw record) pairs; a record may be an Exception (unreadable)."""
    raise NotImplementedError

  def to_row(self, record: Any) -> dict[str, Any]:
    """The row of one record; raises (KeyError, ValueError, TypeError) if unreadable."""
    raise NotImplementedError

  def cache_key(self) -> tuple[Any, ...]:
    """What the rows depend on (besides the class): the options that select them."""
    return ()

  def problems(self) -> list[tuple[str, dict[str, Any]]]:
    """All readable (id, row) pairs, read once per process and options."""
    key = (type(self).__name__,) + self.cache_key()
    if key not in DatasetTask._cache:
      rows, skipped, filtered = [], {}, {}
      for rid, rec in self.records():
        try:
          if isinstance(rec, Exception):
            raise rec
          rows.append((rid, self.to_row(rec)))
        except Filtered as e:
          filtered[rid] = str(e)
        except (KeyError, ValueError, TypeError, IndexError, AttributeError) as e:
          skipped[rid] = f"{type(e).__name__}: {e}"[:200]
      if skipped:
        log.warning("%s: skipped %d unreadable row(s): %s", self.name, len(skipped),
                    "; ".join(f"{k} ({v})" for k, v in list(skipped.items())[:20]))
      if filtered:
        log.info("%s: left out %d row(s) by option: %s", self.name, len(filtered),
                 ", ".join(list(filtered)[:20]))
      DatasetTask._cache[key] = (rows, skipped, filtered)
    rows, self.skipped, self.filtered = DatasetTask._cache[key]
    return rows

  def make_examples(self, seed: int, n: int, split: str = "train") -> list[dict[str, Any]]:
    """Up to `n` rows of `split` (fewer if the split has fewer), shuffled by `seed`."""
    if split not in SPLITS:
      raise ValueError(f"Unknown split {split!r}; valid choices: {', '.join(SPLITS)}.")
    mine = [row for rid, row in self.problems()
            if split_of(f"{self.split_seed}/{rid}", self.test_fraction) == split]
    random.Random(f"rlx/{self.name}/{split}/{int(seed)}").shuffle(mine)
    out = [copy.deepcopy(r) for r in mine[:n]]
    for r in out:
      r["task"] = self.name
    return out

  def data_metrics(self) -> dict[str, float]:
    """Counts of usable, skipped (unreadable) and filtered rows."""
    rows = self.problems()
    return {"data/rows": float(len(rows)), "data/skipped": float(len(self.skipped)),
            "data/filtered": float(len(self.filtered))}


def file_records(path: str, id_field: str = "id") -> Iterator[tuple[str, Any]]:
  """(id, record) of a JSON-lines file; unparsable lines get id FILE:LINE."""
  base = os.path.basename(path)
  for i, rec in read_json_lines(path):
    rid = rec.get(id_field) if isinstance(rec, dict) else None
    yield (str(rid) if rid is not None else f"{base}:{i}"), rec
