"""One cell of the GDPO ablation grid: SFT warm start (shared) + RL with one estimator.

    python experiments/run_cell.py --task arith --variant conditioned --estimator gdpo --seed 0 \
        [--out experiments/runs] [--scale small|gpu] [--steps 100] [--sft_steps 0] \
        [--sft_batch 16] [--force]

The SFT policy of (task, scale, seed, SFT budget) is trained once into
OUT/sft/<task>_<scale>_s<seed>_sft<steps>x<batch>/hf; every estimator's RL
starts from that checkpoint (configs/ablation.py with checkpoint=...), so the
estimators of one seed start from identical policies with identical budgets.
RL runs in OUT/<cellset>/<estimator>_s<seed> (cellset: task[_variant][_scale])
and writes metrics.jsonl, rewards.png, hf/, and cell.json (arguments, wall
times, machine). A finished cell is skipped; --force re-runs its RL (not the
shared SFT). A cell stopped by SIGTERM is marked "stopped" (exit status 3) and
the same command resumes it from its checkpoint. Same seed, same machine: same
numbers.
"""
from __future__ import annotations

import argparse
import fcntl
import json
import logging
import os
import platform
import shutil
import subprocess
import sys
import time
from typing import Any, Sequence

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from rlx.train import metrics as metrics_lib  # noqa: E402

# Arguments that define a cell's budget: a finished cell is reused only if they match.
BUDGET_KEYS = ("steps", "sft_steps", "sft_batch")


def cellset_name(task: str, variant: str = "default", scale: str = "small") -> str:
  """Folder / results name of a task variant at a scale, e.g. 'arith_conditioned'."""
  parts = [task] + ([variant] if variant != "default" else []) + ([scale] if scale != "small" else [])
  return "_".join(parts)


def sft_dir(out: str, task: str, scale: str, seed: int, sft_steps: int, sft_batch: int) -> str:
  return os.path.join(out, "sft", f"{task}_{scale}_s{seed}_sft{sft_steps}x{sft_batch}")


def cell_dir(out: str, task: str, variant: str, scale: str, estimator: str, seed: int) -> str:
  return os.path.join(out, cellset_name(task, variant, scale), f"{estimator}_s{seed}")


def config_arg(args: argparse.Namespace, **extra: Any) -> str:
  """The configs/ablation.py argument string of a cell."""
  keys = ("task", "variant", "estimator", "seed", "scale") + BUDGET_KEYS
  d = {k: getattr(args, k) for k in keys}
  d.update(extra)
  return ",".join(f"{k}={v}" for k, v in d.items())


def build_parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0],
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--task", required=True, choices=("toolcall", "arith", "code"))
  p.add_argument("--variant", default="default", choices=("default", "conditioned"))
  p.add_argument("--estimator", required=True,
                 help="a registered advantage estimator (grid: grpo, dr_grpo, gdpo, bnpo)")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--out", default=os.path.join("experiments", "runs"))
  p.add_argument("--scale", default="small", choices=("small", "gpu"))
  p.add_argument("--steps", type=int, default=100, help="RL steps")
  p.add_argument("--sft_steps", type=int, default=0,
                 help="SFT steps (0: the task's default, configs/ablation.py SFT_STEPS)")
  p.add_argument("--sft_batch", type=int, default=16)
  p.add_argument("--force", action="store_true", help="re-run the RL of a finished cell")
  return p


def check_args(args: argparse.Namespace) -> None:
  """Fails before any compute on an unknown estimator or task variant, or a bad budget.

  Resolves --sft_steps 0 to the task's default SFT steps (in place).
  """
  from rlx import advantages
  from rlx.train.config import load_config
  advantages.ESTIMATORS.get(args.estimator)  # KeyError lists the registered names
  if args.sft_steps == 0:
    args.sft_steps = load_config("ablation.py", config_arg(args)).sft.steps
  for k in BUDGET_KEYS:
    if getattr(args, k) < 1:
      raise ValueError(f"--{k} must be >= 1, got {getattr(args, k)}.")
  load_config("ablation.py", config_arg(args))  # ValueError on an unknown task/variant


def machine() -> dict[str, Any]:
  import jax
  d = jax.devices()[0]
  cpu = platform.processor() or platform.machine()
  try:
    with open("/proc/cpuinfo") as f:
      cpu = next((l.split(":", 1)[1].strip() for l in f if l.startswith("model name")), cpu)
  except OSError:
    pass
  cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
  return {"platform": d.platform, "device": d.device_kind, "num_devices": jax.device_count(),
          "cpu": cpu, "cores": cores, "jax": jax.__version__, "host": platform.node()}


def git_commit() -> str:
  try:
    sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True,
                         text=True, check=True).stdout.strip()
    # experiments/results is what the grid itself writes between cells.
    dirty = subprocess.run(["git", "status", "--porcelain", "--", ".",
                            ":(exclude)experiments/results"], cwd=REPO, capture_output=True,
                           text=True, check=True).stdout.strip()
    return sha + ("+dirty" if dirty else "")
  except (OSError, subprocess.CalledProcessError):
    return "unknown"


def _read_json(path: str) -> dict[str, Any] | None:
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)


def _write_json(path: str, obj: dict[str, Any]) -> None:
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    json.dump(obj, f, indent=1, default=str)
  os.replace(tmp, path)


def ensure_sft(args: argparse.Namespace) -> tuple[str, float, bool]:
  """(HF checkpoint, SFT wall seconds, whether it ran in this call); one SFT per key."""
  from rlx.main import run
  from rlx.train.config import load_config
  d = sft_dir(args.out, args.task, args.scale, args.seed, args.sft_steps, args.sft_batch)
  os.makedirs(d, exist_ok=True)
  with open(os.path.join(d, ".lock"), "w") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)  # a concurrent cell of the same key waits here
    timing = _read_json(os.path.join(d, "timing.json"))
    hf = os.path.join(d, "hf")
    if timing is not None and os.path.exists(os.path.join(hf, "config.json")):
      return hf, timing["sft_wall_s"], False
    t0 = time.time()
    out = run(load_config("ablation.py", config_arg(args, stage="sft")), d)
    wall = time.time() - t0
    _write_json(os.path.join(d, "timing.json"), {"sft_wall_s": wall, "machine": machine()})
    return out["hf"], wall, True


def run_cell(args: argparse.Namespace) -> dict[str, Any]:
  """Runs (or skips, if finished with the same budget) one cell; returns its cell.json."""
  from rlx.main import run
  from rlx.train.config import load_config
  check_args(args)
  wd = cell_dir(args.out, args.task, args.variant, args.scale, args.estimator, args.seed)
  meta_path = os.path.join(wd, "cell.json")
  old = check_budget(args)
  budget = {k: getattr(args, k) for k in BUDGET_KEYS}
  if (old is not None and not args.force and old.get("status") == "done"
      and finished(wd, args.steps)):
    logging.info("Cell already finished: %s (--force re-runs it).", wd)
    return old
  if args.force and os.path.exists(wd):
    shutil.rmtree(wd)
  os.makedirs(wd, exist_ok=True)
  hf, sft_wall, sft_ran = ensure_sft(args)
  cfg = load_config("ablation.py", config_arg(args, checkpoint=os.path.abspath(hf)))
  meta = {"task": args.task, "variant": args.variant, "scale": args.scale,
          "estimator": args.estimator, "seed": args.seed, **budget,
          "cellset": cellset_name(args.task, args.variant, args.scale),
          "rewards": {n: float(r["weight"]) for n, r in cfg.rewards.items()},
          "task_options": cfg.data.task_options.to_dict(), "num_train": cfg.data.num_train,
          "group_size": cfg.sampling.group_size, "batch_prompts": cfg.train.batch_prompts,
          "max_new_tokens": cfg.sampling.max_new_tokens, "arch": dict(cfg.model.arch),
          "sft_dir": os.path.dirname(hf), "sft_wall_s": sft_wall, "sft_ran_here": sft_ran,
          "command": "python " + " ".join(sys.argv),
          "commit": git_commit(), "machine": machine(), "status": "running",
          # An interrupted cell resumes from its last checkpoint; rl_wall_s adds the
          # time of the earlier part when it was recorded (a stop, not a SIGKILL).
          "resumed": old is not None and not args.force}
  earlier = float(old.get("rl_wall_s") or 0.0) if meta["resumed"] else 0.0
  _write_json(meta_path, meta)
  t0 = time.time()
  last = run(cfg, wd)
  reached = last_step(wd)
  if not finished(wd, args.steps):  # stopped by a signal: the trainer saved and returned
    meta.update(status="stopped", stopped_at_step=reached,
                rl_wall_s=earlier + time.time() - t0)
    _write_json(meta_path, meta)
    logging.warning("Cell %s stopped at step %s of %d; the same command resumes it.", wd,
                    reached, args.steps)
    return meta
  if not last:  # resumed from the checkpoint of the last step: nothing left to train
    last = metrics_lib.read_jsonl(os.path.join(wd, "metrics.jsonl"))[-1]
  meta.update(status="done", rl_wall_s=earlier + time.time() - t0, final=last)
  _write_json(meta_path, meta)
  logging.info("Cell %s done: RL %.0f s (SFT %.0f s%s).", wd, meta["rl_wall_s"], sft_wall,
               "" if sft_ran else ", shared")
  return meta


def last_step(wd: str) -> int | None:
  """The last step in WD/metrics.jsonl (None without rows)."""
  path = os.path.join(wd, "metrics.jsonl")
  if not os.path.exists(path):
    return None
  return max((int(r["step"]) for r in metrics_lib.read_jsonl(path)), default=None)


def finished(wd: str, steps: int) -> bool:
  """RL in WD reached its last step and exported the policy (a stop during the
  last step logs that step but skips the export)."""
  return last_step(wd) == steps and os.path.exists(os.path.join(wd, "hf", "config.json"))


def check_budget(args: argparse.Namespace) -> dict[str, Any] | None:
  """The cell's existing cell.json (None if none); ValueError if its budget differs
  from these arguments and --force is not given."""
  wd = cell_dir(args.out, args.task, args.variant, args.scale, args.estimator, args.seed)
  old = _read_json(os.path.join(wd, "cell.json"))
  budget = {k: getattr(args, k) for k in BUDGET_KEYS}
  if old is not None and not args.force and {k: old.get(k) for k in BUDGET_KEYS} != budget:
    raise ValueError(f"{wd} holds a cell with budget {({k: old.get(k) for k in BUDGET_KEYS})}, "
                     f"not {budget}: pass --force to re-run it, or another --out.")
  return old


def main(argv: Sequence[str] | None = None) -> int:
  from rlx.main import setup_logging
  setup_logging()  # rlx's INFO lines; libraries' only from WARNING up
  args = build_parser().parse_args(argv)
  try:
    check_args(args)
    check_budget(args)
  except (KeyError, ValueError) as e:
    print(f"run_cell: {e.args[0] if e.args else e}", file=sys.stderr)
    return 2
  meta = run_cell(args)
  print(json.dumps({k: meta.get(k) for k in ("cellset", "estimator", "seed", "status",
                                             "rl_wall_s", "sft_wall_s", "final")},
                   default=float))
  return 0 if meta["status"] == "done" else 3


if __name__ == "__main__":
  sys.exit(main())
