"""Registry of reward functions selectable by name in configs.

A reward function has the TRL signature

    fn(prompts: list[str], completions: list[str], **columns) -> list[float | None]

where `columns` are the dataset's extra fields (lists aligned with prompts).
`None` marks a missing reward (it becomes NaN and is masked out of every
statistic).
"""
from rlx.registry import Registry

REWARD_FNS = Registry("reward function")
