"""`arith`: integer arithmetic under a length limit.

Prompt: "Compute 17+8*3. Max 16 chars.\\n". A completion may show work, one
operation per line, and must end with "Answer: N":

  demo with work:   "8*3=24\\n17+24=41\\nAnswer: 41"   (correct, too long)
  direct demo:      "Answer: 41"                       (correct, fits)

Showing work makes a small model more accurate but usually breaks the limit,
so `correct` and `length` pull apart (the tension GDPO's Eq. 8 addresses).

Rewards (columns 'answer' int, 'max_len' int):
  arith/correct            1 if the last "Answer: <int>" equals the answer.
  arith/length             1 if len(completion) <= max_len, else 0.
  arith/length_if_correct  arith/length if arith/correct == 1, else 0.
"""
from __future__ import annotations

import random
import re
from typing import Any

from rlx.data.tasks.base import TASKS, Task, as_random
from rlx.rewards.rules import completion_text, get_column
from rlx.rewards.registry import REWARD_FNS

_ANSWER_RE = re.compile(r"Answer:[ \t]*(-?\d+)")
_VERBOSE = "Let me think step by step.\n"


def parse_answer(text: str) -> int | None:
  """The integer after the last 'Answer:' in `text` (None if there is none)."""
  found = _ANSWER_RE.findall(text)
  return int(found[-1]) if found else None


def solve(operands: list[int], ops: list[str]) -> tuple[int, list[str]]:
  """Value of the expression with * before +,-; and the work lines 'a*b=c'."""
  nums, ops = list(operands), list(ops)
  steps = []
  for group in ("*", "+-"):
    i = 0
    while i < len(ops):
      if ops[i] in group:
        a, b, op = nums[i], nums[i + 1], ops[i]
        c = a * b if op == "*" else a + b if op == "+" else a - b
        steps.append(f"{a}{op}{b}={c}")
        nums[i:i + 2] = [c]
        del ops[i]
      else:
        i += 1
  return nums[0], steps


def _correct_one(text: str, answer: Any) -> float:
  return float(parse_answer(text) == int(answer))


@REWARD_FNS.register("arith/correct")
def correct_reward(prompts, completions, **columns) -> list[float | None]:
  """1 if the last 'Answer: <int>' equals column 'answer'."""
  del prompts
  answers = get_column(columns, "answer", len(completions), "arith/correct")
  return [None if a is None else _correct_one(completion_text(c), a)
          for c, a in zip(completions, answers)]


@REWARD_FNS.register("arith/length")
def length_reward(prompts, completions, **columns) -> list[float | None]:
  """1 if the completion has at most column 'max_len' characters."""
  del prompts
  limits = get_column(columns, "max_len", len(completions), "arith/length")
  return [None if m is None else float(len(completion_text(c)) <= int(m))
          for c, m in zip(completions, limits)]


@REWARD_FNS.register("arith/length_if_correct")
def length_if_correct_reward(prompts, completions, **columns) -> list[float | None]:
  """arith/length counted only on correct completions (GDPO Eq. 8), else 0."""
  length = length_reward(prompts, completions, **columns)
  correct = correct_reward(prompts, completions, **columns)
  return [None if l is None or c is None else l * c for l, c in zip(length, correct)]


@TASKS.register("arith")
class ArithTask(Task):
  """Integer expressions with +,-,*; rewards correct + length under `max_len`."""

  name = "arith"
  default_rewards = {"arith/correct": 1.0, "arith/length": 1.0}
  corrupt_kinds = ("wrong", "format", "long")

  def __init__(self, max_len: int = 16, num_ops: tuple[int, int] = (1, 2),
               max_operand: int = 30, work_prob: float = 0.5):
    """`work_prob`: share of demos that show work (they usually exceed max_len)."""
    self.max_len, self.num_ops = max_len, num_ops
    self.max_operand, self.work_prob = max_operand, work_prob
    worst = len(f"Answer: -{max_operand ** (num_ops[1] + 1)}")
    if worst > max_len:
      raise ValueError(
          f"arith max_len={max_len} is shorter than the longest direct answer "
          f"({worst} chars for max_operand={max_operand}, num_ops={num_ops}).")

  def sample_problem(self, rng: random.Random) -> tuple[str, dict[str, Any]]:
    k = rng.randint(*self.num_ops)
    operands = [rng.randint(1, self.max_operand) for _ in range(k + 1)]
    ops = [rng.choice("+-*") for _ in range(k)]
    expr = "".join(f"{a}{o}" for a, o in zip(operands, ops)) + str(operands[-1])
    value, steps = solve(operands, ops)
    direct = f"Answer: {value}"
    demo = "\n".join(steps + [direct]) if rng.random() < self.work_prob else direct
    prompt = f"Compute {expr}. Max {self.max_len} chars.\n"
    return expr, {"prompt": prompt, "demo": demo, "answer": value,
                  "max_len": self.max_len, "expression": expr, "num_ops": k}

  def corrupt(self, demo: str, rng: Any, rate: float,
              row: dict[str, Any] | None = None) -> str:
    """With prob. `rate`: a wrong answer, a format error, or an overlong completion.

    'wrong' and 'format' set arith/correct to 0; 'long' keeps the answer and
    exceeds `max_len` (lowers arith/length unless the demo was already long).
    """
    del row
    rng = as_random(rng)
    if rng.random() >= rate:
      return demo
    value = parse_answer(demo)
    kind = rng.choice(self.corrupt_kinds) if value is not None else "long"
    if kind == "wrong":
      wrong = value + rng.choice([-1, 1]) * rng.randint(1, 10)
      head = demo[:demo.rfind("Answer:")]
      return f"{head}Answer: {wrong}"
    if kind == "format":
      bad = rng.choice(["Answer {}", "answer: {}", "Ans: {}", "= {}", "{}"])
      head = demo[:demo.rfind("Answer:")]
      return head + bad.format(value)
    out = demo
    while len(out) <= self.max_len:
      out = _VERBOSE + out
    return out
