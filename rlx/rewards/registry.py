"""Registry of reward functions selectable by name in configs.

A reward function has the TRL signature

    fn(prompts: list[str], completions: list[str], **columns) -> list[float | None]

where `columns` are the dataset's extra fields (lists aligned with prompts).
`None` marks a missing reward (it becomes NaN and is masked out of every
statistic). A function's options (config `kwargs`) are its keyword
parameters; `**columns` only receives dataset columns. A misspelled option,
which would otherwise land in `**columns` and be ignored, fails at start-up
(`REWARD_FNS.check_options`).
"""
from __future__ import annotations

from rlx.registry import Registry

# Options: keyword parameters after (prompts, completions); a function taking
# `**kwargs` under another name than `columns` may forward them: not checked.
REWARD_FNS = Registry("reward function", inputs=2, data_kwargs="columns")

# Pairwise preference functions for Pref-GRPO's pairwise_NM
# (config.advantage.inputs.pairwise_NM = {'name': 'pairwise', 'fn': NAME}):
# fn(prompt, completion_a, completion_b, **options) -> P(a beats b) in [0, 1].
PAIRWISE_FNS = Registry("pairwise function", inputs=3)
