"""Metrics: console, JSONL in the workdir, TensorBoard, and a PNG of curves.

Only process 0 writes. `MetricsWriter.write(step, metrics)` takes a flat dict
of Python/NumPy scalars; keys use `/` as a separator (`reward/format/mean`).
"""
from __future__ import annotations

import json
import math
import os
from typing import Any, Iterable, Mapping

import jax
import numpy as np


def to_scalars(metrics: Mapping[str, Any]) -> dict[str, float]:
  """Flattens nested dicts and converts scalar arrays to floats (skips others)."""
  out: dict[str, float] = {}

  def rec(prefix, v):
    if isinstance(v, Mapping):
      for k, x in v.items():
        rec(f"{prefix}/{k}" if prefix else str(k), x)
      return
    a = np.asarray(jax.device_get(v))
    if a.size == 1:
      out[prefix] = float(a.reshape(()))

  rec("", metrics)
  return out


class MetricsWriter:
  """Writes metrics rows to `workdir/metrics.jsonl` and TensorBoard."""

  def __init__(self, workdir: str, *, enabled: bool = True, filename: str = "metrics.jsonl",
               tensorboard: bool = True):
    self.enabled = enabled
    self.path = os.path.join(workdir, filename)
    self._tb = None
    if enabled:
      os.makedirs(workdir, exist_ok=True)
      if tensorboard:
        try:
          from tensorboardX import SummaryWriter
          self._tb = SummaryWriter(os.path.join(workdir, "tb"))
        except Exception:  # pragma: no cover - tensorboardX missing
          self._tb = None

  def truncate_after(self, step: int) -> None:
    """Drops rows with step > `step` (a resumed run rewrites them)."""
    if not self.enabled or not os.path.exists(self.path):
      return
    rows = read_jsonl(self.path)
    keep = [r for r in rows if r.get("step", 0) <= step]
    tmp = self.path + ".tmp"
    with open(tmp, "w") as f:
      for r in keep:
        f.write(json.dumps(r) + "\n")
    os.replace(tmp, self.path)

  def write(self, step: int, metrics: Mapping[str, Any]) -> dict[str, float]:
    row = to_scalars(metrics)
    if not self.enabled:
      return row
    with open(self.path, "a") as f:
      f.write(json.dumps({"step": int(step), **{k: _json_float(v) for k, v in row.items()}}) + "\n")
    if self._tb is not None:
      for k, v in row.items():
        if math.isfinite(v):
          self._tb.add_scalar(k, v, step)
      self._tb.flush()
    return row

  def close(self) -> None:
    if self._tb is not None:
      self._tb.close()


def _json_float(v: float) -> float | str:
  return v if math.isfinite(v) else str(v)


def read_jsonl(path: str) -> list[dict[str, Any]]:
  rows = []
  with open(path) as f:
    for line in f:
      line = line.strip()
      if line:
        try:
          rows.append(json.loads(line))
        except json.JSONDecodeError:
          continue  # a line cut by a kill: ignore it
  return rows


def plot_curves(rows: Iterable[Mapping[str, Any]], keys: list[str], out_png: str,
                title: str = "") -> str:
  """Plots `keys` against step (one panel per key) into `out_png`."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  rows = list(rows)
  keys = [k for k in keys if any(k in r for r in rows)]
  if not keys:
    return ""
  n = len(keys)
  cols = min(3, n)
  nrows = (n + cols - 1) // cols
  fig, axes = plt.subplots(nrows, cols, figsize=(4.2 * cols, 3.0 * nrows), squeeze=False)
  for ax, k in zip(axes.flat, keys):
    pts = [(r["step"], r[k]) for r in rows if k in r and isinstance(r[k], (int, float))]
    if pts:
      xs, ys = zip(*pts)
      ax.plot(xs, ys, marker="." if len(xs) < 40 else None)
    ax.set_title(k, fontsize=9)
    ax.set_xlabel("step")
    ax.grid(alpha=0.3)
  for ax in list(axes.flat)[n:]:
    ax.axis("off")
  if title:
    fig.suptitle(title)
  fig.tight_layout()
  fig.savefig(out_png, dpi=110)
  plt.close(fig)
  return out_png
