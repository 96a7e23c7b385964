"""Built-in tasks: synthetic (toolcall, arith, code) and real data (bfcl, humaneval, reasoning_gym).

Importing this package registers the tasks in `TASKS` and their reward
functions in `rlx.rewards.registry.REWARD_FNS` ("toolcall/format", ...).
"""
import inspect

from rlx.data.tasks import arith, code, toolcall  # noqa: F401  (registration)
from rlx.data.tasks import bfcl, humaneval, reasoning  # noqa: F401  (real data)
from rlx.data.tasks.base import SPLITS, TASKS, Task, split_of

__all__ = ["TASKS", "SPLITS", "Task", "split_of", "get_task"]


def get_task(name: str, **options) -> Task:
  """An instance of the registered task `name` with constructor `options`.

  KeyError lists the valid names; TypeError names an unknown option and lists
  the task's options.
  """
  cls = TASKS.get(name)
  valid = [p for p in inspect.signature(cls.__init__).parameters if p != "self"]
  unknown = sorted(set(options) - set(valid))
  if unknown:
    raise TypeError(f"task {name!r} has no option(s) {', '.join(unknown)}; valid: "
                    f"{', '.join(valid) or '(none)'}.")
  return cls(**options)
