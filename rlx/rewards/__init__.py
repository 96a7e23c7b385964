"""Reward functions (TRL signature) selectable by name from `REWARD_FNS`.

Importing this package registers the built-in rewards: rule rewards
(`rules`), math answer equivalence (`math_reward`), ToolRL tool-call scoring
(`toolcall`), sandboxed code execution (`code`, `sandbox`) and reward models
(`reward_models`: "reward_model", "reward_model_ensemble").
"""
from rlx.rewards.registry import REWARD_FNS
from rlx.rewards import rules
from rlx.rewards import math_reward
from rlx.rewards import toolcall
from rlx.rewards import code
from rlx.rewards import reward_models

__all__ = ["REWARD_FNS", "rules", "math_reward", "toolcall", "code", "reward_models"]
