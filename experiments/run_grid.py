"""The GDPO ablation grid: every (task variant, seed, estimator) cell, one at a time, then tables.

    python experiments/run_grid.py [--tasks toolcall arith arith:conditioned code:conditioned]
        [--estimators grpo dr_grpo gdpo bnpo] [--seeds 0 1 2] [--out experiments/runs]
        [--results experiments/results] [--scale small] [--steps 100] [--sft_steps 0]
        [--sft_batch 16]

Each cell runs `experiments/run_cell.py` in a fresh process (finished cells are
skipped, so an interrupted grid resumes); the estimators of a seed follow each
other and share that seed's SFT warm start. Then `experiments/summarize.py`
writes RESULTS/<cellset>.{md,png} and RESULTS/summary.md. Exit status 1 if a
cell failed (the others still run and are summarized).
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from typing import Sequence

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)

import summarize  # noqa: E402  (experiments/summarize.py)

TASKS = ("toolcall", "arith", "arith:conditioned", "code:conditioned")
ESTIMATORS = ("grpo", "dr_grpo", "gdpo", "bnpo")


def parse_task(spec: str) -> tuple[str, str]:
  """'arith:conditioned' -> ('arith', 'conditioned'); 'toolcall' -> ('toolcall', 'default')."""
  task, _, variant = spec.partition(":")
  return task, variant or "default"


def cell_commands(args: argparse.Namespace) -> list[list[str]]:
  """One run_cell.py command line per cell, task-major, then seed, then estimator."""
  cmds = []
  for spec in args.tasks:
    task, variant = parse_task(spec)
    for seed in args.seeds:
      for est in args.estimators:
        cmds.append([sys.executable, os.path.join(HERE, "run_cell.py"), "--task", task,
                     "--variant", variant, "--estimator", est, "--seed", str(seed),
                     "--out", args.out, "--scale", args.scale, "--steps", str(args.steps),
                     "--sft_steps", str(args.sft_steps), "--sft_batch", str(args.sft_batch)])
  return cmds


def build_parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
  p.add_argument("--tasks", nargs="+", default=list(TASKS), help="task[:variant]")
  p.add_argument("--estimators", nargs="+", default=list(ESTIMATORS))
  p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
  p.add_argument("--out", default=os.path.join("experiments", "runs"))
  p.add_argument("--results", default=os.path.join("experiments", "results"))
  p.add_argument("--scale", default="small", choices=("small", "gpu"))
  p.add_argument("--steps", type=int, default=100)
  p.add_argument("--sft_steps", type=int, default=0, help="0: each task's default")
  p.add_argument("--sft_batch", type=int, default=16)
  return p


def main(argv: Sequence[str] | None = None) -> int:
  args = build_parser().parse_args(argv)
  cmds = cell_commands(args)
  failed, t_start = [], time.time()
  for i, cmd in enumerate(cmds):
    name = " ".join(cmd[cmd.index("--task"):cmd.index("--out")])
    done = time.time() - t_start
    eta = f", ETA {done / i * (len(cmds) - i) / 60:.0f} min" if i else ""
    print(f"[grid {i + 1}/{len(cmds)}] {name} (elapsed {done / 60:.1f} min{eta})", flush=True)
    t0 = time.time()
    rc = subprocess.run(cmd, check=False).returncode
    print(f"[grid {i + 1}/{len(cmds)}] {'done' if rc == 0 else f'FAILED (exit {rc})'} in "
          f"{time.time() - t0:.0f} s", flush=True)
    if rc:
      failed.append(name)
  print(f"[grid] {len(cmds)} cells in {(time.time() - t_start) / 60:.1f} min", flush=True)
  for path in summarize.summarize(args.out, args.results):
    print(path)
  if failed:
    print("[grid] failed cells: " + "; ".join(failed), file=sys.stderr)
  return 1 if failed else 0


if __name__ == "__main__":
  sys.exit(main())
