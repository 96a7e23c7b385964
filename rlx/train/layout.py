"""The device layout of a step's rollout: no compute on padding.

After sampling, the reference/old log-probs and the updates run on the batch
trimmed to its longest real prompt and longest completion, each rounded up to
a length bucket (a few static shapes, so a warm run does not recompile):

    trim = trim_for(prompt_len_N, completion_len_N, prompt_buckets, completion_buckets)
    tokens [N, P' + C'] = last P' prompt columns + first C' completion columns

Only padding columns go (prompts are left-padded, completions right-padded),
and positions come from the mask, so every real token's log-prob, hence the
loss and its gradient, is unchanged. Per-token arrays become [N, C'].

Packing (config.train.packing) then places several (prompt + completion)
sequences in one row of length P' + C' (first-fit decreasing), with segment
ids and per-sequence positions; the row count is rounded up to a bucket too.
`pack` returns the gather indices the jitted functions use (rlx/train/steps.py):

    pack_src [B', T']  flat index into tokens [N, P' + C'] of each packed slot; -1: empty
    pack_seg [B', T']  segment id of each slot (the sequence's index in its row)
    unpack   [N, C']   flat index into the packed [B' * T'] of completion token (n, c);
                       0 (the first slot, whose log-prob is 0) past the completion's end
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np


def length_buckets(configured: Sequence[int], limit: int, what: str, smallest: int = 16
                   ) -> tuple[int, ...]:
  """Sorted buckets ending with `limit`; () configured: powers of two and three
  times powers of two from `smallest` below `limit` (16, 24, 32, 48, 64, ...: a
  length above `smallest` is padded by at most a third of its bucket; twice the
  compiled shapes of powers of two alone), then `limit`. A bucket outside
  [1, limit] is a config error naming `what`."""
  if not configured:
    sizes = {m << k for k in range(limit.bit_length()) for m in (1, 3)}
    return tuple(sorted({b for b in sizes if smallest <= b < limit} | {limit}))
  bad = [int(b) for b in configured if not 1 <= int(b) <= limit]
  if bad:
    raise ValueError(f"config.{what}={tuple(configured)}: bucket {bad[0]} is outside "
                     f"[1, {limit}]; valid: lengths 1..{limit} (or () for the default grid).")
  return tuple(sorted({int(b) for b in configured} | {limit}))


def bucket(length: int, buckets: Sequence[int]) -> int:
  """Smallest bucket >= length (buckets sorted, the last one >= every length)."""
  return next(b for b in buckets if b >= length)


@dataclasses.dataclass(frozen=True)
class Trim:
  """Columns a trimmed batch keeps: the last `prompt_len` prompt columns and
  the first `completion_len` completion columns."""
  prompt_len: int
  completion_len: int

  @property
  def row_len(self) -> int:
    return self.prompt_len + self.completion_len


def trim_for(prompt_len_N: np.ndarray, completion_len_N: np.ndarray,
             prompt_buckets: Sequence[int], completion_buckets: Sequence[int]) -> Trim:
  """The trim of a batch with these real prompt / completion lengths (host ints)."""
  return Trim(bucket(max(int(np.max(prompt_len_N)), 1), prompt_buckets),
              bucket(max(int(np.max(completion_len_N)), 1), completion_buckets))


def row_buckets(rows: int, multiple: int = 1) -> tuple[int, ...]:
  """Packed row counts: powers of two and three times powers of two below `rows`
  (1, 2, 3, 4, 6, 8, 12, ...: before the rounding below, at most a third of a
  pass's rows are empty), then `rows`, each rounded up to a multiple of `multiple`
  (the batch shards)."""
  up = lambda x: -(-x // multiple) * multiple
  sizes = {m << k for k in range(rows.bit_length()) for m in (1, 3) if m << k < rows}
  return tuple(sorted({up(x) for x in sizes} | {up(rows)}))


def pack(prompt_len_N: np.ndarray, completion_len_N: np.ndarray, trim: Trim,
         rows: Sequence[int]) -> dict[str, np.ndarray]:
  """Packing indices (module docstring) for sequences of these lengths in rows
  of trim.row_len slots; the row count is the smallest of `rows` that holds
  the first-fit-decreasing bins."""
  prompt_len_N = np.asarray(prompt_len_N, np.int64)
  completion_len_N = np.asarray(completion_len_N, np.int64)
  n, width = len(prompt_len_N), trim.row_len
  seq_len_N = prompt_len_N + completion_len_N
  if seq_len_N.max(initial=0) > width:
    raise ValueError(f"pack: a sequence of {seq_len_N.max()} tokens exceeds rows of {width}.")
  free: list[int] = []          # free slots per bin
  bin_N = np.zeros(n, np.int64)
  for i in np.argsort(-seq_len_N, kind="stable"):
    b = next((j for j, f in enumerate(free) if f >= seq_len_N[i]), len(free))
    if b == len(free):
      free.append(width)
    bin_N[i] = b
    free[b] -= seq_len_N[i]
  n_rows = bucket(len(free), rows)
  pack_src = np.full((n_rows, width), -1, np.int32)
  pack_seg = np.zeros((n_rows, width), np.int32)
  unpack = np.zeros((n, trim.completion_len), np.int32)
  fill = np.zeros(n_rows, np.int64)
  count = np.zeros(n_rows, np.int64)
  for i in range(n):  # in row order: a packed row keeps its sequences in batch order
    b, o, p, c = bin_N[i], fill[bin_N[i]], prompt_len_N[i], completion_len_N[i]
    start = i * width + trim.prompt_len - p  # the sequence's first column in its trimmed row
    pack_src[b, o:o + p + c] = start + np.arange(p + c)
    pack_seg[b, o:o + p + c] = count[b]
    unpack[i, :c] = b * width + o + p + np.arange(c)
    fill[b] += p + c
    count[b] += 1
  return {"pack_src": pack_src, "pack_seg": pack_seg, "unpack": unpack}
