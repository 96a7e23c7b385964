"""Quickstart: SFT warm start of a tiny model on the tool-call task, then GDPO.

    python -m rlx.main --config=configs/quickstart.py --workdir=runs/quickstart

About 10 minutes on 2 CPU cores. Held-out format and correctness are written
to workdir/metrics.jsonl (eval/*) and plotted in workdir/rewards.png.
"""
from rlx.train.config import load_config


def get_config(arg: str | None = None):
  return load_config("gdpo.py", arg or "task=toolcall,estimator=gdpo,steps=100,sft_steps=500")
