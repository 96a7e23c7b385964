"""A tiny RL config for the trainer tests (random tiny model, arith rows from a file).

Registers `test/flaky`, a reward that raises on every third completion, to
check that errors in user reward functions become missing rewards.
"""
from rlx.rewards.registry import REWARD_FNS
from rlx.train.config import base_config, parse_arg


@REWARD_FNS.register("test/flaky", overwrite=True)
def flaky(prompts, completions, **cols):
  out = []
  for i, c in enumerate(completions):
    if (len(c) + i) % 3 == 0:
      raise RuntimeError("flaky reward")
    out.append(float(len(c) % 5) / 4)
  return out


def get_config(arg=None):
  a = parse_arg(arg, dict(data="", steps=4, estimator="gdpo", ckpt_every=1))
  c = base_config()
  c.seed = 3
  c.model.init = "random"
  c.model.arch.update(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=1)
  c.data.task = "file"
  c.data.path = a["data"]
  c.data.max_prompt_len = 40
  c.train.prompt_buckets = (40,)  # one bucket: each step compiles once (tests/test_layout.py trims)
  c.data.num_eval = 4
  c.rewards = {"correct": {"fn": "arith/correct", "weight": 1.0},
               "length": {"fn": "arith/length", "weight": 0.5},
               "flaky": {"fn": "test/flaky", "weight": 0.5}}
  c.sampling.group_size = 4
  c.sampling.max_new_tokens = 12
  c.advantage.estimator = a["estimator"]
  c.train.batch_prompts = 2
  c.train.steps = a["steps"]
  c.train.ckpt_every = a["ckpt_every"]
  c.train.eval_every = 2
  c.train.progress = False
  c.eval.batch_prompts = 4
  c.optim.lr = 1e-3
  c.train.export_hf = True
  return c
