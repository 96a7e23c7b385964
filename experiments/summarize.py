"""Tables and curves of the GDPO ablation grid from the cells' metrics.

    python experiments/summarize.py [--runs experiments/runs] [--results experiments/results]
    python experiments/summarize.py compare RUN_A RUN_B   # same numbers? (exit 1 if not)

For every cellset (task variant at a scale) found under --runs, writes
RESULTS/<cellset>.md: held-out rewards (sampling at T=1 on the task's test
prompts) at the last step, mean ± std over seeds per estimator, next to the
shared SFT start (step 0); the constraint-violation rates; the mean over the
eval points after step 0; per-seed differences from GRPO; wall times. RESULTS/<cellset>.png: held-out and
training rewards vs RL step, mean over seeds, one line per estimator.
RESULTS/summary.md: the cellsets, machines and total wall time.
"""
from __future__ import annotations

import argparse
import collections
import glob
import json
import logging
import math
import os
import sys
from typing import Any, Sequence

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from rlx.train import metrics as metrics_lib  # noqa: E402

# Constraint-violation rates: task -> [(label, reward name)]; rate = 1 - held-out mean.
VIOLATIONS = {
    "toolcall": [("format failures", "format")],
    "bfcl": [("format failures", "format")],
    "arith": [("over length limit", "length_ok")],
    "code": [("errors", "no_error"), ("over length limit", "length_ok")],
}
ESTIMATOR_ORDER = ("grpo", "dr_grpo", "gdpo", "bnpo")
ESTIMATOR_LABEL = {"grpo": "GRPO", "dr_grpo": "GRPO w/o std (Dr. GRPO)", "gdpo": "GDPO",
                   "bnpo": "BNPO"}
IGNORED_PREFIXES = ("time/", "throughput/", "memory/")


# ----------------------------------------------------------------------------
# Reading.


def read_jsonl(path: str) -> list[dict[str, float]]:
  """Metric rows; a line cut by a kill is skipped, and "nan"/"inf" (how the
  trainer writes non-finite values) are read back as floats."""
  def num(v):
    return float(v) if isinstance(v, str) and v in ("nan", "inf", "-inf") else v
  return [{k: num(v) for k, v in r.items()} for r in metrics_lib.read_jsonl(path)]


def load_cells(runs: str) -> tuple[list[dict[str, Any]], list[str]]:
  """Finished cells under `runs` (cell.json + metrics rows), and the unfinished dirs."""
  cells, unfinished = [], []
  for meta_path in sorted(glob.glob(os.path.join(runs, "*", "*", "cell.json"))):
    d = os.path.dirname(meta_path)
    with open(meta_path) as f:
      meta = json.load(f)
    metrics = os.path.join(d, "metrics.jsonl")
    rows = read_jsonl(metrics) if os.path.exists(metrics) else []
    why = incomplete(meta, rows)
    if why:
      logging.warning("Leaving out %s: %s.", d, why)
      unfinished.append(d)
      continue
    meta["dir"] = d
    meta["rows"] = rows
    cells.append(meta)
  return cells, unfinished


def incomplete(meta: dict[str, Any], rows: list[dict[str, float]]) -> str | None:
  """Why a cell cannot go in a table (None if it can): not marked done, or its
  metrics stop before the last step or lack the held-out eval there (a run
  stopped by a signal saves a checkpoint and returns early)."""
  if meta.get("status") != "done":
    return f"status {meta.get('status')!r}, not 'done'"
  steps = meta.get("steps")
  counted = collections.Counter(int(r["step"]) for r in rows)
  repeated = sorted(st for st, n in counted.items() if n > 1)
  if repeated:
    return f"metrics repeat steps {repeated[:5]}"
  last = max(counted, default=None)
  if last != steps:
    return f"metrics end at step {last}, not at the last step {steps}"
  first = next(iter(meta.get("rewards") or {}), None)
  if first is not None and not any(f"eval/{first}" in r for r in rows if r["step"] == steps):
    return f"no held-out eval at the last step {steps}"
  return None


def eval_points(rows: list[dict[str, float]], name: str) -> dict[int, float]:
  """step -> held-out mean of reward `name` (eval/<name>)."""
  return {int(r["step"]): r[f"eval/{name}"] for r in rows if f"eval/{name}" in r}


def train_curve(rows: list[dict[str, float]], name: str) -> dict[int, float]:
  """step -> training batch mean of reward `name` (reward/<name>/mean)."""
  key = f"reward/{name}/mean"
  return {int(r["step"]): r[key] for r in rows if key in r}


# ----------------------------------------------------------------------------
# Statistics and formatting.


def mean_std(xs: Sequence[float]) -> tuple[float, float]:
  """Mean and sample std (ddof 1; nan for one value) of the finite values."""
  a = np.asarray([x for x in xs if x is not None and math.isfinite(x)], np.float64)
  if a.size == 0:
    return math.nan, math.nan
  return float(a.mean()), float(a.std(ddof=1)) if a.size > 1 else math.nan


def fmt(xs: Sequence[float], digits: int = 3) -> str:
  m, s = mean_std(xs)
  if math.isnan(m):
    return "-"
  return f"{m:.{digits}f}" if math.isnan(s) else f"{m:.{digits}f} ± {s:.{digits}f}"


def _order(estimators) -> list[str]:
  known = [e for e in ESTIMATOR_ORDER if e in estimators]
  return known + sorted(e for e in estimators if e not in ESTIMATOR_ORDER)


def _machine(m: dict[str, Any]) -> str:
  if m.get("platform") == "cpu":
    return f"{m.get('cpu', 'CPU')}, {m.get('cores')} cores (jax {m.get('jax')})"
  return f"{m.get('num_devices')}x {m.get('device')} (jax {m.get('jax')})"


def cellset_stats(cells: list[dict[str, Any]]) -> dict[str, Any]:
  """Per estimator: final / averaged held-out rewards, violations, lengths, times."""
  budgets = {tuple(c[k] for k in ("steps", "sft_steps", "sft_batch")) for c in cells}
  if len(budgets) > 1:
    raise ValueError(f"Cells of {cells[0]['cellset']} have different budgets "
                     f"(steps, sft_steps, sft_batch) {sorted(budgets)}: "
                     + ", ".join(c["dir"] for c in cells) + ". Move the stray ones out of --runs.")
  w = cells[0]["rewards"]
  names = sorted(w, key=lambda n: w[n] == 0)  # optimized rewards first, logged-only last
  task = cells[0]["task"]
  viol = [(lab, n) for lab, n in VIOLATIONS.get(task, []) if n in names]
  by_est = collections.defaultdict(list)
  for c in cells:
    by_est[c["estimator"]].append(c)
  out: dict[str, Any] = {"names": names, "violations": viol, "estimators": {}, "init": {}}
  init_cells = {c["seed"]: c for c in cells}  # the step-0 eval is the shared SFT start
  for n in names:
    out["init"][n] = [eval_points(c["rows"], n).get(0, math.nan) for c in init_cells.values()]
  out["init"]["length"] = [next((r["eval/completion_length"] for r in c["rows"]
                                 if r["step"] == 0 and "eval/completion_length" in r), math.nan)
                           for c in init_cells.values()]
  for est in _order(by_est):
    cs = sorted(by_est[est], key=lambda c: c["seed"])
    e: dict[str, Any] = {"seeds": [c["seed"] for c in cs], "final": {}, "avg": {}}
    for n in names:
      pts = [eval_points(c["rows"], n) for c in cs]
      e["final"][n] = [p[max(p)] if p else math.nan for p in pts]
      e["avg"][n] = [float(np.mean([v for s, v in p.items() if s > 0])) if len(p) > 1
                     else math.nan for p in pts]
    last = [max((r for r in c["rows"] if "eval/completion_length" in r), key=lambda r: r["step"],
                default={}) for c in cs]
    e["final"]["length"] = [r.get("eval/completion_length", math.nan) for r in last]
    e["rl_wall_s"] = [c.get("rl_wall_s", math.nan) for c in cs]
    e["cell_wall_s"] = [c.get("rl_wall_s", 0.0) + (c.get("sft_wall_s", 0.0) if c.get("sft_ran_here")
                                                   else 0.0) for c in cs]
    out["estimators"][est] = e
  out["sft_wall_s"] = {c["sft_dir"]: c.get("sft_wall_s", math.nan) for c in cells}
  out["paired"] = paired_deltas(out)
  return out


def paired_deltas(st: dict[str, Any], base: str = "grpo") -> dict[str, dict[str, list[float]]]:
  """estimator -> reward -> [final held-out (estimator - base)] over the seeds both ran.

  Cells of one seed start from the same SFT policy and see the same prompts, so
  the per-seed difference removes the seed's shared part of the noise.
  """
  ests = st["estimators"]
  if base not in ests:
    return {}
  b = ests[base]
  out = {}
  for est, e in ests.items():
    if est == base:
      continue
    common = [s for s in e["seeds"] if s in b["seeds"]]
    if common:
      out[est] = {n: [e["final"][n][e["seeds"].index(s)] - b["final"][n][b["seeds"].index(s)]
                      for s in common] for n in st["names"]}
  return out


def _run_config(d: str) -> dict[str, Any]:
  """The config.json rlx.main saved in a run's directory ({} if absent)."""
  path = os.path.join(d, "config.json")
  if not os.path.exists(path):
    return {}
  with open(path) as f:
    return json.load(f)


def _sft_targets(cell: dict[str, Any]) -> str:
  sft_dir = cell.get("sft_dir", "")
  if sft_dir and not os.path.isdir(sft_dir):  # relative to where the cells ran: OUT/sft/NAME
    sft_dir = os.path.join(os.path.dirname(os.path.dirname(cell["dir"])), "sft",
                           os.path.basename(os.path.normpath(sft_dir)))
  rate = _run_config(sft_dir).get("sft", {}).get("corrupt_rate", 0.3)
  return (f"{rate:.0%}-corrupted demonstrations" if rate else
          "the task's demonstrations, uncorrupted (e.g. bfcl's ground-truth calls)")


def _eval_decoding(cell: dict[str, Any]) -> str:
  t = _run_config(cell["dir"]).get("eval", {}).get("temperature", 1.0)
  return "greedy" if t == 0 else f"sampled at temperature {t:g}"


def cellset_markdown(cellset: str, cells: list[dict[str, Any]], st: dict[str, Any]) -> str:
  c0 = cells[0]
  names, viol = st["names"], st["violations"]
  w = c0["rewards"]
  arch = c0.get("arch", {})
  model = (f"policy {arch['checkpoint']}" if "checkpoint" in arch else
           f"{arch.get('num_hidden_layers')} layers, width {arch.get('hidden_size')}")
  lines = [f"# {cellset}: held-out rewards after RL", "",
           f"Task `{c0['task']}`, variant `{c0['variant']}`, scale `{c0['scale']}` "
           f"({model}, completions up to {c0.get('max_new_tokens')} tokens). Rewards (weight): "
           + ", ".join(f"`{n}` ({w[n]:g})" for n in names)
           + ". A weight of 0 is logged, not optimized.", "",
           f"Budget per cell: SFT {c0['sft_steps']} steps x {c0['sft_batch']} on "
           f"{_sft_targets(c0)} (shared by the estimators of a seed), then {c0['steps']} RL "
           f"steps of {c0.get('batch_prompts')} prompts x {c0.get('group_size')} completions. "
           f"Held-out: the task's test prompts, {_eval_decoding(c0)}. Mean ± std (ddof 1) over "
           "seeds.", "",
           "Machine(s): " + "; ".join(sorted({_machine(c["machine"]) for c in cells})) + ".", ""]
  head = (["estimator", "seeds"] + [f"`{n}`" for n in names]
          + [f"{lab} (1 - `{n}`)" for lab, n in viol] + ["length (tokens)"])

  def table(kind: str) -> list[str]:
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    if kind == "final":
      init = st["init"]
      cells_ = (["SFT start (step 0)", str(len(init[names[0]]))] + [fmt(init[n]) for n in names]
                + [fmt([1 - x for x in init[n]]) for _, n in viol] + [fmt(init["length"], 1)])
      rows.append("| " + " | ".join(cells_) + " |")
    for est, e in st["estimators"].items():
      vals = e[kind]
      cells_ = ([ESTIMATOR_LABEL.get(est, est), str(len(e["seeds"]))]
                + [fmt(vals[n]) for n in names] + [fmt([1 - x for x in vals[n]]) for _, n in viol]
                + [fmt(vals["length"], 1) if "length" in vals else "-"])
      rows.append("| " + " | ".join(cells_) + " |")
    return rows

  lines += [f"## Held-out rewards at the last RL step ({c0['steps']})", ""] + table("final")
  lines += ["", "## Held-out rewards averaged over the eval points after step 0", ""] + table("avg")
  if st["paired"]:
    lines += ["", f"## Paired differences from GRPO at the last RL step ({c0['steps']})", "",
              "Per seed, estimator minus GRPO on the same SFT start and prompts; mean ± std "
              "over seeds, and in how many seeds the estimator was higher.", "",
              "| estimator | pairs | " + " | ".join(f"Δ `{n}`" for n in names) + " |",
              "|" + "---|" * (len(names) + 2)]
    for est, d in st["paired"].items():
      k = len(next(iter(d.values())))
      lines.append(f"| {ESTIMATOR_LABEL.get(est, est)} | {k} | " + " | ".join(
          f"{fmt(d[n], 3)} ({sum(x > 0 for x in d[n])}/{k} higher)" for n in names) + " |")
  lines += ["", "## Wall time", "",
            "| estimator | RL per cell (s) | max cell incl. SFT run there (s) |", "|---|---|---|"]
  for est, e in st["estimators"].items():
    lines.append(f"| {ESTIMATOR_LABEL.get(est, est)} | {fmt(e['rl_wall_s'], 0)} | "
                 f"{max(e['cell_wall_s']):.0f} |")
  sft = list(st["sft_wall_s"].values())
  lines += ["", f"SFT warm starts: {len(sft)}, {fmt(sft, 0)} s each.", "",
            f"Curves: [{cellset}.png]({cellset}.png). Cells: "
            + ", ".join(f"`{os.path.basename(c['dir'])}`" for c in cells)
            + f". Commit(s): {', '.join(sorted({c.get('commit', '?') for c in cells}))}.", ""]
  return "\n".join(lines)


def smooth(y: np.ndarray, k: int) -> np.ndarray:
  """Trailing moving average over up to `k` points (fewer at the start)."""
  c = np.concatenate([[0.0], np.cumsum(np.asarray(y, np.float64))])
  i = np.arange(1, len(y) + 1)
  lo = np.maximum(i - k, 0)
  return (c[i] - c[lo]) / (i - lo)


def plot_cellset(cellset: str, cells: list[dict[str, Any]], st: dict[str, Any], path: str,
                 window: int = 5) -> None:
  """Held-out (top) and training (bottom, moving average) rewards vs step; mean ± std over seeds."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  names = st["names"]
  fig, axes = plt.subplots(2, len(names), figsize=(4.2 * len(names), 6.4), squeeze=False)
  for est in st["estimators"]:
    cs = [c for c in cells if c["estimator"] == est]
    label = ESTIMATOR_LABEL.get(est, est)
    for j, n in enumerate(names):
      for row, curve_fn in ((0, eval_points), (1, train_curve)):
        curves = [curve_fn(c["rows"], n) for c in cs]
        steps = sorted(set.intersection(*[set(cv) for cv in curves])) if curves else []
        if not steps:
          continue
        y = np.asarray([[cv[s] for s in steps] for cv in curves], np.float64)
        if row == 1:
          y = np.stack([smooth(v, window) for v in y])
        m = y.mean(0)
        line, = axes[row, j].plot(steps, m, marker="o" if row == 0 else None, ms=3, label=label)
        if len(cs) > 1:
          s = y.std(0, ddof=1)
          axes[row, j].fill_between(steps, m - s, m + s, color=line.get_color(), alpha=0.15)
  for j, n in enumerate(names):
    axes[0, j].set_title(f"held-out {n} ({_eval_decoding(cells[0])})")
    axes[1, j].set_title(f"training {n} (moving avg {window})")
    axes[1, j].set_xlabel("RL step")
  axes[0, 0].legend(fontsize=8)
  fig.suptitle(f"{cellset}: mean ± std over seeds")
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def summarize(runs: str, results: str) -> list[str]:
  """Writes RESULTS/<cellset>.{md,png} and RESULTS/summary.md; returns the files written."""
  cells, unfinished = load_cells(runs)
  if not cells:
    raise FileNotFoundError(f"No finished cells (cell.json with status done) under {runs}.")
  os.makedirs(results, exist_ok=True)
  groups = collections.defaultdict(list)
  for c in cells:
    groups[c["cellset"]].append(c)
  written, total_rl, sft_walls, machines, longest = [], 0.0, {}, set(), 0.0
  summary = ["# GDPO ablation grid: summary", ""]
  for cellset in sorted(groups):
    cs = sorted(groups[cellset], key=lambda c: (c["estimator"], c["seed"]))
    st = cellset_stats(cs)
    md, png = (os.path.join(results, f"{cellset}.{ext}") for ext in ("md", "png"))
    with open(md, "w") as f:
      f.write(cellset_markdown(cellset, cs, st))
    plot_cellset(cellset, cs, st, png)
    written += [md, png]
    rl = sum(c.get("rl_wall_s", 0.0) for c in cs)
    total_rl += rl
    sft_walls.update(st["sft_wall_s"])
    machines |= {_machine(c["machine"]) for c in cs}
    longest = max([longest] + [x for e in st["estimators"].values() for x in e["cell_wall_s"]])
    counts = ", ".join(f"{e} x{len(v['seeds'])}" for e, v in st["estimators"].items())
    summary.append(f"- [{cellset}]({cellset}.md): {len(cs)} cells ({counts}), "
                   f"RL {rl / 60:.1f} min")
  total = total_rl + sum(sft_walls.values())
  summary += ["", f"Total wall time: {total / 3600:.2f} h ({total_rl / 3600:.2f} h RL in "
              f"{len(cells)} cells + {sum(sft_walls.values()) / 3600:.2f} h for "
              f"{len(sft_walls)} SFT warm starts), run one cell at a time. Longest single "
              f"cell command (RL + the SFT it ran): {longest / 60:.1f} min.", "",
              "Machine(s): " + "; ".join(sorted(machines)) + "."]
  if unfinished:
    summary += ["", "Unfinished cells (not in the tables): "
                + ", ".join(f"`{os.path.relpath(d, runs)}`" for d in unfinished) + "."]
  path = os.path.join(results, "summary.md")
  with open(path, "w") as f:
    f.write("\n".join(summary) + "\n")
  return written + [path]


def compare(dir_a: str, dir_b: str) -> tuple[float, list[str]]:
  """Max |difference| over all metrics of two runs (but time/, throughput/) and the
  keys that differ; a key or step present in only one run counts as different (inf)."""
  ra, rb = (read_jsonl(os.path.join(d, "metrics.jsonl")) for d in (dir_a, dir_b))
  ia, ib = ({(r["step"], k): v for r in rs for k, v in r.items()
             if k != "step" and not k.startswith(IGNORED_PREFIXES)} for rs in (ra, rb))
  worst, differ = 0.0, set()
  for key in set(ia) | set(ib):
    a, b = ia.get(key), ib.get(key)
    if a is None or b is None:
      d = math.inf
    elif a == b or (a != a and b != b):  # equal, or both NaN
      d = 0.0
    else:
      d = abs(a - b)
      d = d if d == d else math.inf  # NaN against a number, or inf against -inf
    if d > 0:
      differ.add(key[1])
    worst = max(worst, d)
  return worst, sorted(differ)


def main(argv: Sequence[str] | None = None) -> int:
  argv = list(sys.argv[1:] if argv is None else argv)
  if argv and argv[0] == "compare":
    p = argparse.ArgumentParser(prog="summarize.py compare")
    p.add_argument("run_a")
    p.add_argument("run_b")
    a = p.parse_args(argv[1:])
    worst, differ = compare(a.run_a, a.run_b)
    print(json.dumps({"max_abs_diff": worst, "differing_keys": differ}))
    return 0 if not differ else 1
  p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
  p.add_argument("--runs", default=os.path.join("experiments", "runs"))
  p.add_argument("--results", default=os.path.join("experiments", "results"))
  a = p.parse_args(argv)
  for path in summarize(a.runs, a.results):
    print(path)
  return 0


if __name__ == "__main__":
  sys.exit(main())
