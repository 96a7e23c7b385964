"""Registry of reward functions selectable by name in configs.

A reward function has the TRL signature

    fn(prompts: list[str], completions: list[str], **columns) -> list[float | None]

where `columns` are the dataset's extra fields (lists aligned with prompts).
`None` marks a missing reward (it becomes NaN and is masked out of every
statistic). A function's options (config `kwargs`) are its keyword
parameters; `**columns` only receives dataset columns.
"""
from __future__ import annotations

import inspect
from typing import Any, Callable, Mapping

from rlx.registry import Registry

REWARD_FNS = Registry("reward function")


def check_reward_kwargs(fn: Callable[..., Any], kwargs: Mapping[str, Any], what: str) -> None:
  """TypeError naming the option and the valid ones if `kwargs` holds a name
  that is not a keyword parameter of `fn` (e.g. a misspelled option, which
  would otherwise land in `**columns` and be ignored). Functions that forward
  `**kwargs` under another name than `columns` are not checked."""
  try:
    params = list(inspect.signature(fn).parameters.values())
  except (TypeError, ValueError):  # no signature (a builtin or C callable)
    return
  var_kw = [p for p in params if p.kind is inspect.Parameter.VAR_KEYWORD]
  if var_kw and var_kw[0].name != "columns":
    return
  named = [p.name for p in params[2:]
           if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)]
  unknown = sorted(set(kwargs) - set(named))
  if unknown:
    raise TypeError(f"{what} has no option(s) {', '.join(map(repr, unknown))}; "
                    f"valid: {', '.join(named) or '(none)'}.")
