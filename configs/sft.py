"""SFT of a tiny model on a built-in task's (imperfect) demonstrations.

    python -m rlx.main --config=configs/sft.py:task=arith --workdir=runs/sft_arith

The result (workdir/hf) is a Hugging Face checkpoint: start RL from it with
`--config.model.init=checkpoint --config.model.checkpoint=runs/sft_arith/hf`.
"""
from rlx.train.config import base_config, parse_arg, task_rewards


def get_config(arg: str | None = None):
  a = parse_arg(arg, dict(task="toolcall", seed=0, steps=600, corrupt_rate=0.3))
  c = base_config()
  c.trainer = "sft"
  c.seed = a["seed"]
  c.model.init = "random"
  c.data.task = a["task"]
  c.rewards = task_rewards(a["task"])
  c.sft.steps = a["steps"]
  c.sft.corrupt_rate = a["corrupt_rate"]
  return c
