"""Cells of the GDPO comparison on a real policy: SmolLM2-135M-Instruct on BFCL.

    python -m rlx.convert --smollm2 --out runs/smollm2
    python experiments/run_real_cell.py --estimators gdpo grpo dr_grpo --seeds 0 1 2 \
        [--model runs/smollm2] [--steps 40] [--sft_steps 10 --sft_batch 4 --sft_lr 1e-4] \
        [--out experiments/runs_real] [--arg k=v ...]
    python experiments/summarize.py --runs experiments/runs_real --results experiments/results

Warm start (--sft_steps > 0): SFT of the converted model on the train split's
ground-truth calls (`configs/real_bfcl.py:trainer=sft`), once per SFT budget and
--arg, in OUT/sft/<name>/hf; every cell's RL starts from it, so all estimators
and seeds start from the same policy (SmolLM2-135M-Instruct itself scores 0 on
both rewards, which leaves GRPO-style advantages zero). Each (estimator, seed)
cell is `configs/real_bfcl.py:estimator=E,seed=S,...` run by rlx.main in
OUT/bfcl_smollm2[_sft<steps>x<batch>]/<E>_s<S>, with a cell.json that
experiments/summarize.py reads (the layout of run_cell.py's cells; the step-0
row is the starting policy). Cells run one after another in this process; a
finished cell or SFT (same budget) is skipped, an interrupted one resumes
from its checkpoint with the same command. --arg passes more real_bfcl.py
arguments to SFT and RL (e.g. --arg prompts=8 group=8 dtype=bfloat16 on an
accelerator); they are part of the cell's budget.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from typing import Sequence

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)

import run_cell  # noqa: E402  (experiments/run_cell.py: machine, commit, cell.json helpers)

CELLSET = "bfcl_smollm2"


def build_parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
  p.add_argument("--estimators", nargs="+", default=["gdpo", "grpo", "dr_grpo"])
  p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
  p.add_argument("--model", default="runs/smollm2", help="HF directory (rlx.convert --smollm2)")
  p.add_argument("--steps", type=int, default=40)
  p.add_argument("--sft_steps", type=int, default=0, help="SFT warm-start steps (0: none)")
  p.add_argument("--sft_batch", type=int, default=4)
  p.add_argument("--sft_lr", type=float, default=1e-4)
  p.add_argument("--out", default=os.path.join("experiments", "runs_real"))
  p.add_argument("--arg", nargs="*", default=[], help="more real_bfcl.py arguments, k=v")
  return p


def sft_name(args: argparse.Namespace) -> str:
  return f"sft{args.sft_steps}x{args.sft_batch}"


def ensure_sft(args: argparse.Namespace) -> tuple[str, float, bool]:
  """(HF checkpoint, SFT wall seconds, whether it ran in this call) of the warm start."""
  from rlx.main import run
  from rlx.train.config import load_config
  d = os.path.join(args.out, "sft", f"{CELLSET}_{sft_name(args)}")
  arg = ",".join([f"model={os.path.abspath(args.model)}", "trainer=sft",
                  f"sft_steps={args.sft_steps}", f"sft_batch={args.sft_batch}",
                  f"sft_lr={args.sft_lr}"] + list(args.arg))
  timing = run_cell._read_json(os.path.join(d, "timing.json"))  # pylint: disable=protected-access
  hf = os.path.join(d, "hf")
  if timing is not None and timing["config_arg"] != arg:
    raise ValueError(f"{d} holds an SFT of {timing['config_arg']}, not {arg}: use another --out.")
  if timing is not None and os.path.exists(os.path.join(hf, "config.json")):
    return hf, timing["sft_wall_s"], False
  t0 = time.time()
  out = run(load_config("real_bfcl.py", arg), d)
  wall = time.time() - t0
  run_cell._write_json(os.path.join(d, "timing.json"),  # pylint: disable=protected-access
                       {"sft_wall_s": wall, "config_arg": arg, "machine": run_cell.machine()})
  return out["hf"], wall, True


def run_one(args: argparse.Namespace, estimator: str, seed: int) -> dict:
  from rlx.main import run
  from rlx.train.config import load_config
  cellset = CELLSET + (f"_{sft_name(args)}" if args.sft_steps else "")
  wd = os.path.join(args.out, cellset, f"{estimator}_s{seed}")
  budget = {"steps": args.steps, "args": sorted(args.arg), "sft_steps": args.sft_steps,
            "sft_batch": args.sft_batch, "sft_lr": args.sft_lr}
  meta_path = os.path.join(wd, "cell.json")
  old = run_cell._read_json(meta_path)  # pylint: disable=protected-access
  if old is not None and {k: old.get(k) for k in budget} != budget:
    raise ValueError(f"{wd} holds a cell with budget {({k: old.get(k) for k in budget})}, "
                     f"not {budget}: use another --out.")
  if old is not None and old.get("status") == "done" and run_cell.finished(wd, args.steps):
    logging.info("Cell already finished: %s", wd)
    return old
  if args.sft_steps:
    model, sft_wall, sft_ran = ensure_sft(args)
  else:
    model, sft_wall, sft_ran = args.model, 0.0, False
  arg = ",".join([f"model={os.path.abspath(model)}", f"estimator={estimator}",
                  f"seed={seed}", f"steps={args.steps}"] + list(args.arg))
  cfg = load_config("real_bfcl.py", arg)
  os.makedirs(wd, exist_ok=True)
  meta = {"task": "bfcl", "variant": "default", "scale": "smollm2", "cellset": cellset,
          "estimator": estimator, "seed": seed, **budget, "config_arg": arg,
          "rewards": {n: float(r["weight"]) for n, r in cfg.rewards.items()},
          "task_options": cfg.data.task_options.to_dict(),
          "group_size": cfg.sampling.group_size, "batch_prompts": cfg.train.batch_prompts,
          "max_new_tokens": cfg.sampling.max_new_tokens, "arch": {"checkpoint": args.model},
          "sft_dir": os.path.dirname(model) if args.sft_steps else "none (the converted model)",
          "sft_wall_s": sft_wall, "sft_ran_here": sft_ran,
          "command": "python " + " ".join(sys.argv), "commit": run_cell.git_commit(),
          "machine": run_cell.machine(), "status": "running", "resumed": old is not None}
  earlier = float(old.get("rl_wall_s") or 0.0) if old else 0.0
  run_cell._write_json(meta_path, meta)  # pylint: disable=protected-access
  t0 = time.time()
  last = run(cfg, wd)
  done = run_cell.finished(wd, args.steps)
  meta.update(status="done" if done else "stopped", rl_wall_s=earlier + time.time() - t0,
              final=last)
  run_cell._write_json(meta_path, meta)  # pylint: disable=protected-access
  return meta


def main(argv: Sequence[str] | None = None) -> int:
  args = build_parser().parse_args(argv)
  from rlx.main import setup_logging
  setup_logging()  # rlx's INFO lines; libraries' only from WARNING up
  for seed in args.seeds:
    for est in args.estimators:
      meta = run_one(args, est, seed)
      if meta["status"] != "done":
        logging.warning("Stopped in %s_s%d; the same command resumes it.", est, seed)
        return 3
  return 0


if __name__ == "__main__":
  sys.exit(main())
