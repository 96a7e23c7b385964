"""Grain prompt pipeline with exact, JSON-serializable resume state.

    it = make_prompt_iterator(rows, batch_prompts=16, seed=0)
    batch = next(it)            # {'prompt': [16 str], 'answer': array[16], ...}
    state = it.get_state()      # JSON dict; store it with the checkpoint
    it.set_state(state)         # the next batches equal an uninterrupted run

Order: source -> global shuffle(seed) -> repeat (a new permutation each epoch)
-> this host's slice (global positions i with i % process_count ==
process_index) -> batches of batch_prompts // process_count rows. Global batch
k is the stream positions [k*batch_prompts, (k+1)*batch_prompts), whatever
the number of hosts; hosts read disjoint rows. With a finite num_epochs the
stream is cut to whole global batches (all hosts run the same number of
steps) unless drop_remainder=False.
"""
from __future__ import annotations

import numbers
from typing import Any, Iterator, Sequence

import grain
import numpy as np

_STATE_VERSION = 1
# A saved position counts global batches, so it may be restored on a different
# number of hosts.
_TOPOLOGY = ("process_index", "process_count", "local_batch")


def collate(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
  """Dict of columns: numbers/bools -> np.ndarray, anything else -> list."""
  keys = list(dict.fromkeys(k for r in rows for k in r))
  out: dict[str, Any] = {}
  for k in keys:
    values = [r.get(k) for r in rows]
    if values and all(isinstance(v, (numbers.Number, np.bool_)) for v in values):
      out[k] = np.asarray(values)
    else:
      out[k] = values
  return out


class PromptIterator(Iterator[dict[str, Any]]):
  """Iterator over host-local prompt batches with get_state()/set_state()."""

  def __init__(self, dataset: grain.MapDataset, meta: dict[str, Any]):
    self._dataset = dataset
    self._meta = meta
    self._it = iter(dataset.to_iter_dataset(
        grain.ReadOptions(num_threads=0, prefetch_buffer_size=0)))

  def __iter__(self) -> PromptIterator:
    return self

  def __next__(self) -> dict[str, Any]:
    return next(self._it)

  @property
  def local_batch_size(self) -> int:
    return self._meta["local_batch"]

  def get_state(self) -> dict[str, Any]:
    """JSON-serializable position; pass it to `set_state` to resume exactly."""
    return {"version": _STATE_VERSION, "grain": dict(self._it.get_state()), **self._meta}

  def set_state(self, state: dict[str, Any]) -> None:
    """Resumes at `state` (also on another host count); ValueError if it belongs
    to another pipeline (rows, seed, batch_prompts, ...)."""
    diff = {k: (state.get(k), v) for k, v in self._meta.items()
            if k not in _TOPOLOGY and state.get(k) != v}
    if diff:
      raise ValueError(
          "Prompt iterator state does not match this pipeline (saved, current): "
          + ", ".join(f"{k}={a!r} vs {b!r}" for k, (a, b) in sorted(diff.items())))
    self._it.set_state(dict(state["grain"]))


def _fingerprint(rows: Sequence[Any]) -> int:
  import hashlib  # pylint: disable=g-import-not-at-top
  h = hashlib.blake2b(digest_size=8)
  for i in sorted({0, len(rows) // 2, len(rows) - 1}):
    if 0 <= i < len(rows):
      h.update(repr(rows[i]).encode())
  return int.from_bytes(h.digest(), "big") >> 1


def make_prompt_iterator(rows: Sequence[dict[str, Any]], *, batch_prompts: int, seed: int,
                         shuffle: bool = True, num_epochs: int | None = None,
                         process_index: int | None = None,
                         process_count: int | None = None,
                         drop_remainder: bool = True) -> PromptIterator:
  """Batches of prompt rows for this host, resumable with get_state/set_state.

  Args:
    rows: the dataset (list of dicts, e.g. from a task or `load_rows`).
    batch_prompts: GLOBAL prompts per step; each host gets
      batch_prompts // process_count of them (must divide).
    seed: shuffle seed (each epoch a different permutation).
    shuffle: False keeps the row order.
    num_epochs: passes over the data; None repeats forever.
    process_index, process_count: this host and the number of hosts;
      default jax.process_index() / jax.process_count().
    drop_remainder: with finite num_epochs, drop the last partial global batch.

  Returns:
    A PromptIterator yielding `collate`d dicts of local_batch rows.
  """
  if process_index is None or process_count is None:
    import jax  # pylint: disable=g-import-not-at-top
    process_index = jax.process_index() if process_index is None else process_index
    process_count = jax.process_count() if process_count is None else process_count
  if not rows:
    raise ValueError("make_prompt_iterator got an empty dataset.")
  if not 0 <= process_index < process_count:
    raise ValueError(f"process_index={process_index} is not in [0, {process_count}).")
  if batch_prompts <= 0 or batch_prompts % process_count:
    raise ValueError(f"batch_prompts={batch_prompts} must be a positive multiple of "
                     f"process_count={process_count}.")
  if num_epochs is not None and num_epochs <= 0:
    raise ValueError(f"num_epochs must be positive or None, got {num_epochs}.")
  local = batch_prompts // process_count
  ds = grain.MapDataset.source(list(rows))
  if shuffle:
    ds = ds.shuffle(seed=seed)
  ds = ds.repeat(num_epochs)
  if num_epochs is not None:
    usable = len(ds) // batch_prompts * batch_prompts if drop_remainder else len(ds)
    if usable == 0:
      raise ValueError(f"{len(rows)} rows x {num_epochs} epochs make no full batch of "
                       f"{batch_prompts}; lower batch_prompts or pass drop_remainder=False.")
    ds = ds[:usable]
  ds = ds[process_index::process_count]
  ds = ds.batch(local, drop_remainder=drop_remainder and num_epochs is not None,
                batch_fn=collate)
  meta = {"seed": int(seed), "shuffle": bool(shuffle), "num_epochs": num_epochs,
          "batch_prompts": int(batch_prompts), "process_index": int(process_index),
          "process_count": int(process_count), "num_rows": len(rows),
          "rows_fingerprint": _fingerprint(rows), "local_batch": local}
  return PromptIterator(ds, meta)
