"""Quickstart: SFT warm start of a tiny model on the tool-call task, then GDPO.

    python -m rlx.main --config=configs/quickstart.py --workdir=runs/quickstart

About 8 minutes on 2 CPU cores: 300 SFT steps on 30%-corrupted demonstrations,
then 80 GDPO steps (16 prompts x 8 completions). Held-out rewards of the
sampling policy (T=1, 256 prompts) are logged at step 0 (the SFT start) and
every 20 steps as eval/* in workdir/metrics.jsonl, and plotted in
workdir/rewards.png.
"""
from rlx.train.config import load_config


def get_config(arg: str | None = None):
  c = load_config("gdpo.py", arg or "task=toolcall,estimator=gdpo,steps=80,sft_steps=300,sft_batch=16")
  c.train.eval_every = 20
  c.train.ckpt_every = 20
  return c
