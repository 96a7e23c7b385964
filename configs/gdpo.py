"""Multi-reward RL on a built-in task with a chosen estimator.

    python -m rlx.main --config=configs/gdpo.py:task=toolcall,estimator=gdpo --workdir=runs/x

Arguments: task (toolcall | arith | code), estimator (any registered name:
gdpo, grpo, dr_grpo, bnpo, mrn, rloo, ...), seed, steps, sft_steps.
The policy is a tiny model warm-started by SFT on imperfect demonstrations.
"""
from rlx.train.config import base_config, parse_arg, task_rewards

# Estimator options used by the GDPO paper's comparisons.
# Static prompt / completion buckets per task (characters = tokens here).
_LENGTHS = {"toolcall": (176, 80), "arith": (40, 48), "code": (192, 64)}

_OPTIONS = {
    "gdpo": {"eps": 1e-4},
    "grpo": {"eps": 1e-4},
}


def get_config(arg: str | None = None):
  a = parse_arg(arg, dict(task="toolcall", estimator="gdpo", seed=0, steps=150,
                          sft_steps=600, sft_batch=32, group_size=8, batch_prompts=16))
  c = base_config()
  c.seed = a["seed"]
  c.model.init = "sft"
  c.data.task = a["task"]
  c.rewards = task_rewards(a["task"])
  c.advantage.estimator = a["estimator"]
  c.advantage.options = dict(_OPTIONS.get(a["estimator"], {}))
  c.sampling.group_size = a["group_size"]
  c.data.max_prompt_len, c.sampling.max_new_tokens = _LENGTHS.get(a["task"], (128, 64))
  c.sampling.temperature = 1.0
  c.train.batch_prompts = a["batch_prompts"]
  c.train.steps = a["steps"]
  c.train.eval_every = 25
  # Held-out rewards of the sampling policy (T=1), as RL optimizes it; greedy
  # decoding of the SFT model is already near the ceiling on format.
  c.eval.temperature = 1.0
  c.data.num_eval = 256
  c.eval.batch_prompts = 128
  c.train.ckpt_every = 25
  c.optim.lr = 1e-4
  c.optim.warmup_steps = 5
  c.loss.terms = {"pg": {"clip_low": 0.2, "clip_high": 0.2, "aggregation": "token_mean"},
                  "kl": {"coef": 0.01, "estimator": "k3"}}
  c.sft.steps = a["sft_steps"]
  c.sft.batch_size = a["sft_batch"]
  return c
