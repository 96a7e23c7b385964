"""RL of a real instruct model on BFCL function calling (format + correct).

    python -m rlx.convert --smollm2 --out runs/smollm2
    python -m rlx.main --config=configs/real_bfcl.py:trainer=sft --workdir=runs/real_bfcl_sft
    python -m rlx.main --config=configs/real_bfcl.py:model=runs/real_bfcl_sft/hf \
        --workdir=runs/real_bfcl

Arguments (`configs/real_bfcl.py:estimator=grpo,seed=1,...`):
  model       HF directory of the policy (default runs/smollm2, from rlx.convert)
  estimator   gdpo | grpo | dr_grpo (GRPO without std) | any registered name
  seed        RL seed (prompt order, samples); the train/held-out split is fixed
  steps       RL steps
  prompts     prompts per step; group completions per prompt
  categories  BFCL categories joined by '+' (default simple_python+parallel: the
              ones whose prompts fit 384 tokens)
  new_tokens  completion budget (tokens)
  num_eval    held-out prompts (greedy) at step 0 and every eval_every steps
  lr, dtype   (float32 on CPU; bfloat16 on an accelerator)
  trainer     rl, or sft: the warm start, SFT of `model` on the train split's
              ground-truth calls (the task's 'demo', scoring format = correct
              = 1) for sft_steps x sft_batch rows at sft_lr, written to
              WORKDIR/hf; the held-out split is untouched

Rewards are BFCL's (rlx/data/tasks/bfcl.py): `format` (exactly one
<tool_call>[...]</tool_call> block of well-formed calls) and `correct` (graded
AST correctness, 1 when BFCL's checker accepts), weight 1 each, as the GDPO
paper's tool-calling setting (format + correctness, each normalized apart by
GDPO). Held-out prompts whose chat-templated prompt exceeds max_prompt_len
tokens are left out and counted (data/*/too_long at step 0).
"""
from rlx.train.config import base_config, parse_arg

DEFAULTS = dict(model="runs/smollm2", estimator="gdpo", seed=0, steps=40, prompts=4, group=4,
                categories="simple_python+parallel", new_tokens=128, prompt_len=384,
                num_eval=48, eval_every=10, lr=2e-6, dtype="float32", kl=0.01,
                trainer="rl", sft_steps=10, sft_batch=4, sft_lr=1e-4)

# Estimator options of the GDPO paper's comparison (eps as configs/gdpo.py).
OPTIONS = {"gdpo": {"eps": 1e-4}, "grpo": {"eps": 1e-4}}


def get_config(arg: str | None = None):
  a = parse_arg(arg, DEFAULTS)
  c = base_config()
  c.seed = a["seed"]
  c.model.init = "checkpoint"
  c.model.checkpoint = a["model"]
  c.model.dtype = c.model.param_dtype = a["dtype"]
  c.model.remat = "full"
  c.data.task = "bfcl"
  c.data.task_options = {"categories": tuple(a["categories"].split("+"))}
  c.data.max_prompt_len = a["prompt_len"]
  c.data.num_train = 100000  # all train rows of the categories
  c.data.num_eval = a["num_eval"]
  c.rewards = {"format": {"fn": "bfcl/format", "weight": 1.0},
               "correct": {"fn": "bfcl/correct", "weight": 1.0}}
  c.advantage.estimator = a["estimator"]
  c.advantage.options = dict(OPTIONS.get(a["estimator"], {}))
  c.sampling.group_size = a["group"]
  c.sampling.max_new_tokens = a["new_tokens"]
  c.sampling.temperature = 1.0
  c.train.batch_prompts = a["prompts"]
  c.train.steps = a["steps"]
  c.train.eval_every = a["eval_every"]
  c.train.ckpt_every = a["eval_every"]
  c.eval.temperature = 0.0  # greedy held-out decoding
  c.eval.batch_prompts = 16
  c.optim.lr = a["lr"]
  c.trainer = a["trainer"]
  c.sft.steps = a["sft_steps"]
  c.sft.batch_size = a["sft_batch"]
  c.sft.lr = a["sft_lr"]
  c.sft.warmup_steps = max(1, a["sft_steps"] // 5)
  c.sft.corrupt_rate = 0.0
  c.optim.warmup_steps = 2
  c.loss.terms = {"pg": {"clip_low": 0.2, "clip_high": 0.2, "aggregation": "token_mean"},
                  "kl": {"coef": a["kl"], "estimator": "k3"}}
  return c
