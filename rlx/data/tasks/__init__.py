"""Built-in tasks: synthetic (toolcall, arith, code) and real data (bfcl, humaneval, reasoning_gym).

Importing this package registers the tasks in `TASKS` and their reward
functions in `rlx.rewards.registry.REWARD_FNS` ("toolcall/format", ...).
"""
from rlx.data.tasks import arith, code, toolcall  # noqa: F401  (registration)
from rlx.data.tasks import bfcl, humaneval, reasoning  # noqa: F401  (real data)
from rlx.data.tasks.base import SPLITS, TASKS, Task, split_of

__all__ = ["TASKS", "SPLITS", "Task", "split_of", "get_task"]


def get_task(name: str, **options) -> Task:
  """An instance of the registered task `name` with constructor `options`
  (checked by `TASKS.check_options`: unknown names and options are named with
  the valid ones)."""
  return TASKS.check_options(name, options)(**options)
