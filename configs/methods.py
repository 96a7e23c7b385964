"""Every advantage estimator and reward transform of README's lists, on the arith task.

    python -m rlx.main --config=configs/methods.py:method=f_grpo --workdir=runs/f_grpo

Arguments: method (a name of `METHODS`: an estimator, or a transform run
before GRPO), seed, steps, sft_steps, group_size, batch_prompts. The rest is
configs/gdpo.py on arith (rewards `correct` and `length`). Each entry sets
what its method needs: options, data columns (`advantage.columns`) and the
inputs the loop produces (`advantage.inputs`, rlx/train/structured.py):
pairwise outcomes from a length preference (pref_grpo), work-vs-answer phases
split at "Answer:" (f_grpo), lines as turns scored by arith/correct (mapo),
agents parsed from the completion (agent_grouping), reference-policy samples
(log_sigmoid, calibrate). docs/methods.md has the formulas.
"""
from rlx.train.config import load_config, parse_arg

_REFERENCE = {"reference_rewards_GMK": {"name": "reference_samples", "samples": 4}}
_TURNS = {"delimiter": "\n", "max_turns": 4}

# method -> advantage settings (estimator, options, transforms, columns, inputs).
METHODS = {
    "grpo": {"options": {"eps": 1e-4}},
    "dr_grpo": {},
    "rloo": {},
    "reinforce_batch": {},
    "gdpo": {"options": {"eps": 1e-4}},
    "mrn": {},
    "bnpo": {},
    "tmn_reweight": {"options": {"num_tasks": 3}, "columns": {"task_ids_N": "num_ops"}},
    "agent_grouping": {"options": {"num_agents": 2},
                       # agent 0 shows its work ("3*4=12"), agent 1 answers directly
                       "inputs": {"agent_ids_N": {"name": "agent_parser",
                                                  "patterns": [r"\d[-+*]\d+="], "default": 1}}},
    "pref_grpo": {"inputs": {"pairwise_NM": {"name": "pairwise", "fn": "shorter"}}},
    "f_grpo": {"options": {"phase_columns": ["length", "correct"]},
               "inputs": {"phase_mask_NZT": {"name": "phase_split",
                                             "delimiters": ["Answer:"]}}},
    "mapo": {"inputs": {"turn_scores_NU": {"name": "turn_scores", "reward": "arith/correct",
                                           **_TURNS},
                        "turn_ids_NT": {"name": "turn_ids", **_TURNS}}},
    "reference_frozen": {"options": {"stats": {"mean_K": [0.5, 0.5], "std_K": [0.5, 0.5]}}},
    "lightningrl": {},
    "per_reward": {},
    "gd2po": {},
    "dvao": {},
    "mo_grpo": {},
    # Transforms (before GRPO).
    "conditioned": {"transforms": [{"name": "conditioned", "target": "length",
                                    "condition": "correct"}]},
    "overlong_penalty": {"transforms": [{"name": "overlong_penalty", "max_length": 40,
                                         "cache_length": 16}]},
    "log_sigmoid": {"transforms": [{"name": "log_sigmoid", "ref_key": "reference_rewards_GMK"}],
                    "inputs": _REFERENCE},
    "calibrate": {"transforms": [{"name": "calibrate", "ref_key": "reference_rewards_GMK"}],
                  "inputs": _REFERENCE},
    "ensemble": {"transforms": [{"name": "ensemble", "columns": ["correct", "length"],
                                 "method": "mean_minus_std"}]},
    "difficulty_scale": {"transforms": [{"name": "difficulty_scale"}],
                         "columns": {"difficulty_scale_G": "num_ops"}},
    "deconfound": {"transforms": [{"name": "deconfound", "key": "lengths_N",
                                   "columns": ["correct"]}]},
    "cmo_weights": {"transforms": [{"name": "cmo_weights"}]},
}

TRANSFORM_METHODS = ("conditioned", "overlong_penalty", "log_sigmoid", "calibrate", "ensemble",
                     "difficulty_scale", "deconfound", "cmo_weights")


def get_config(arg: str | None = None):
  a = parse_arg(arg, dict(method="gdpo", seed=0, steps=150, sft_steps=600, group_size=8,
                          batch_prompts=16))
  if a["method"] not in METHODS:
    raise ValueError(f"Unknown method {a['method']!r}. Valid: {', '.join(METHODS)}.")
  m = METHODS[a["method"]]
  estimator = "grpo" if a["method"] in TRANSFORM_METHODS else a["method"]
  c = load_config("gdpo.py", f"task=arith,estimator={estimator},seed={a['seed']},steps={a['steps']},"
                      f"sft_steps={a['sft_steps']},group_size={a['group_size']},"
                      f"batch_prompts={a['batch_prompts']}")
  if "options" in m:
    c.advantage.options = dict(m["options"])
  c.advantage.transforms = tuple(m.get("transforms", ()))
  c.advantage.columns = dict(m.get("columns", {}))
  c.advantage.inputs = dict(m.get("inputs", {}))
  return c
