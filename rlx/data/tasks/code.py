"""`code`: write a one-line Python function `f` from a description and examples.

Prompt (description + two visible examples), then the completion:

  # f(x): multiply x by 3, then add 1
  # f(2) == 7
  # f(5) == 16
  ->  def f(x): return x*3+1

Rewards (column 'tests': JSON list of [args, expected] hidden tests):
  code/pass_rate  share of hidden tests where f(*args) == expected (0 when the
                  program does not compile or defines no f).
  code/no_error   1 if the program compiles, defines f and no test raises or
                  times out, else 0.

Programs run in one subprocess per batch (`_execute`), with a per-program time
limit and memory/CPU rlimits. This is NOT a security sandbox; swap `_execute`
for the sandbox of rlx.rewards when running untrusted models at scale.
"""
from __future__ import annotations

import collections
import json
import os
import random
import re
import subprocess
import sys
import tempfile
from typing import Any, Callable, Sequence

from rlx.data.tasks.base import TASKS, Task, as_random
from rlx.rewards.rules import completion_text, get_column
from rlx.rewards.registry import REWARD_FNS

_RUNNER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_code_runner.py")
_MARK = "@@RLX@@ "
_FENCE_RE = re.compile(r"```(?:python|py)?\s*\n?(.*?)```", re.DOTALL)


# --------------------------------------------------------------------------
# Problem families: (argument, description, body, parameter sampler).
# --------------------------------------------------------------------------
def _ints(rng):
  return rng.randint(-20, 40)


def _strs(rng):
  return "".join(rng.choice("abcde") for _ in range(rng.randint(1, 6)))


def _lists(rng):
  return [rng.randint(0, 20) for _ in range(rng.randint(1, 5))]


_INPUTS = {"x": _ints, "s": _strs, "xs": _lists}

FAMILIES: tuple[tuple[str, str, str, Callable[[random.Random], dict[str, Any]]], ...] = (
    ("x", "multiply x by {a}, then add {b}", "x*{a}+{b}",
     lambda r: {"a": r.randint(2, 12), "b": r.randint(1, 19)}),
    ("x", "subtract {a} from x, then square", "(x-{a})**2", lambda r: {"a": r.randint(1, 19)}),
    ("x", "x modulo {a}", "x%{a}", lambda r: {"a": r.randint(2, 19)}),
    ("x", "x integer-divided by {a}", "x//{a}", lambda r: {"a": r.randint(2, 19)}),
    ("x", "{a} if x is even, else {b}", "{a} if x%2==0 else {b}",
     lambda r: dict(zip("ab", r.sample(range(0, 20), 2)))),
    ("x", "the larger of x and {a}", "max(x,{a})", lambda r: {"a": r.randint(-9, 29)}),
    ("x", "the distance between x and {a}", "abs(x-{a})", lambda r: {"a": r.randint(-9, 29)}),
    ("s", "s reversed", "s[::-1]", lambda r: {}),
    ("s", "s repeated {a} times", "s*{a}", lambda r: {"a": r.randint(2, 9)}),
    ("s", "s in upper case", "s.upper()", lambda r: {}),
    ("s", "the first {a} characters of s", "s[:{a}]", lambda r: {"a": r.randint(1, 5)}),
    ("s", "the last {a} characters of s", "s[-{a}:]", lambda r: {"a": r.randint(1, 5)}),
    ("s", "how often '{c}' occurs in s", "s.count('{c}')", lambda r: {"c": r.choice("abcde")}),
    ("s", "s with '{c}' added at both ends", "'{c}'+s+'{c}'", lambda r: {"c": r.choice("xyz")}),
    ("xs", "the sum of xs times {a}", "sum(xs)*{a}", lambda r: {"a": r.randint(2, 9)}),
    ("xs", "the largest element of xs", "max(xs)", lambda r: {}),
    ("xs", "the smallest element of xs", "min(xs)", lambda r: {}),
    ("xs", "xs sorted from largest to smallest", "sorted(xs)[::-1]", lambda r: {}),
    ("xs", "xs with {a} added to each element", "[v+{a} for v in xs]",
     lambda r: {"a": r.randint(1, 19)}),
    ("xs", "the elements of xs greater than {a}", "[v for v in xs if v>{a}]",
     lambda r: {"a": r.randint(0, 15)}),
    ("xs", "how many elements of xs are even", "len([v for v in xs if v%2==0])", lambda r: {}),
)


def _reference(arg: str, body: str) -> Callable[[Any], Any]:
  return eval(f"lambda {arg}: {body}")  # pylint: disable=eval-used  # trusted template


# --------------------------------------------------------------------------
# Execution.
# --------------------------------------------------------------------------
def extract_program(completion: str) -> str:
  """The code of a completion: the first ``` fenced block if any, else all of it."""
  m = _FENCE_RE.search(completion)
  return m.group(1) if m else completion


def _execute(programs: Sequence[str], tests: Sequence[Sequence[tuple[list[Any], Any]]],
             *, timeout_s: float = 2.0, mem_bytes: int = 1 << 30) -> list[dict[str, Any]]:
  """Runs each program's f on its tests in a subprocess.

  Args:
    programs: Python sources that should define `f`.
    tests: per program, a list of (args, expected) with JSON values.
    timeout_s: time limit per program (its definition and all its tests).
    mem_bytes: address-space limit of the subprocess.

  Returns:
    Per program {'passed': int, 'total': int, 'error': exception name or None}.
    A program that hangs or kills the interpreter gets error 'TimeoutError' /
    'Crash'; the following programs run in a fresh subprocess.
  """
  n = len(programs)
  results: list[dict[str, Any] | None] = [None] * n
  start = 0
  with tempfile.TemporaryDirectory(prefix="rlx_exec_") as cwd:
    while start < n:
      budget = timeout_s * (n - start) + 10.0
      req = json.dumps({"programs": list(programs), "tests": [list(t) for t in tests],
                        "timeout": timeout_s, "start": start,
                        "mem_bytes": mem_bytes, "cpu_s": int(budget) + 1})
      try:
        proc = subprocess.run(
            [sys.executable, "-I", _RUNNER], input=req, capture_output=True,
            text=True, timeout=budget, cwd=cwd, env={"PYTHONHASHSEED": "0"},
            check=False)
        stdout, failure = proc.stdout, "Crash"
      except subprocess.TimeoutExpired as e:
        out = e.stdout or ""
        stdout = out.decode(errors="replace") if isinstance(out, bytes) else out
        failure = "TimeoutError"
      for line in stdout.splitlines():
        if line.startswith(_MARK):
          try:
            r = json.loads(line[len(_MARK):])
          except ValueError:
            continue
          if isinstance(r, dict) and isinstance(r.get("i"), int) and 0 <= r["i"] < n:
            results[r["i"]] = {k: r.get(k) for k in ("passed", "total", "error")}
      while start < n and results[start] is not None:
        start += 1
      if start < n:  # The runner died or hung on program `start`.
        results[start] = {"passed": 0, "total": len(tests[start]), "error": failure}
        start += 1
  return results  # type: ignore[return-value]


_CACHE: collections.OrderedDict[tuple[str, str], dict[str, Any]] = collections.OrderedDict()
_CACHE_SIZE = 4096


def run_tests(programs: Sequence[str], tests_json: Sequence[str]) -> list[dict[str, Any]]:
  """`_execute` with an LRU cache keyed by (program, tests), so the rewards of
  one batch (pass_rate, no_error) run each program once."""
  keys = [(p, t) for p, t in zip(programs, tests_json)]
  todo = list(dict.fromkeys(k for k in keys if k not in _CACHE))
  if todo:
    fresh = _execute([p for p, _ in todo], [json.loads(t) for _, t in todo])
    for k, r in zip(todo, fresh):
      _CACHE[k] = r
  out = []
  for k in keys:
    _CACHE.move_to_end(k)
    out.append(_CACHE[k])
  while len(_CACHE) > _CACHE_SIZE:
    _CACHE.popitem(last=False)
  return out


def _results(completions, columns, fn_name):
  tests = get_column(columns, "tests", len(completions), fn_name)
  idx = [i for i, t in enumerate(tests) if t is not None]
  progs = [extract_program(completion_text(completions[i])) for i in idx]
  tjson = [tests[i] if isinstance(tests[i], str) else json.dumps(tests[i]) for i in idx]
  res: list[dict[str, Any] | None] = [None] * len(completions)
  for i, r in zip(idx, run_tests(progs, tjson)):
    res[i] = r
  return res


@REWARD_FNS.register("code/pass_rate")
def pass_rate_reward(prompts, completions, **columns) -> list[float | None]:
  """Share of the hidden tests (column 'tests') that the completion's f passes."""
  del prompts
  return [None if r is None else r["passed"] / max(r["total"], 1)
          for r in _results(completions, columns, "code/pass_rate")]


@REWARD_FNS.register("code/no_error")
def no_error_reward(prompts, completions, **columns) -> list[float | None]:
  """1 if the completion compiles, defines f and runs every test without error."""
  del prompts
  return [None if r is None else float(r["error"] is None)
          for r in _results(completions, columns, "code/no_error")]


# --------------------------------------------------------------------------
# Task.
# --------------------------------------------------------------------------
_MUTATIONS = (("+", "-"), ("-", "+"), ("*", "+"), (">", "<"), ("max", "min"),
              ("min", "max"), ("upper", "lower"), ("[::-1]", ""), ("%2==0", "%2==1"),
              ("**2", "*2"), ("//", "/"), ("[:", "[1:"))
_BREAKS = ((":", ""), ("return ", "retrun "), (")", ""), ("(", "(("))


def _passes_all(program: str, tests: list[Any]) -> bool:
  scope: dict[str, Any] = {}
  try:
    exec(program, scope)  # pylint: disable=exec-used  # a mutation of our own demo
    return all(scope["f"](*a) == e for a, e in tests)
  except Exception:  # pylint: disable=broad-except
    return False


@TASKS.register("code")
class CodeTask(Task):
  """One-line functions of an int, a string or a list; rewards pass_rate + no_error."""

  name = "code"
  default_rewards = {"code/pass_rate": 1.0, "code/no_error": 1.0}
  corrupt_kinds = ("syntax", "runtime", "logic")

  def __init__(self, num_shown: int = 2, num_tests: int = 5):
    self.num_shown, self.num_tests = num_shown, num_tests

  def sample_problem(self, rng: random.Random) -> tuple[str, dict[str, Any]]:
    arg, desc, body, params = rng.choice(FAMILIES)
    p = params(rng)
    body = body.format(**p)
    ref = _reference(arg, body)
    inputs: list[Any] = []
    while len(inputs) < self.num_shown + self.num_tests:
      v = _INPUTS[arg](rng)
      if v not in inputs:
        inputs.append(v)
    cases = [[[v], ref(v)] for v in inputs]
    shown, hidden = cases[:self.num_shown], cases[self.num_shown:]
    lines = [f"# f({arg}): {desc.format(**p)}"]
    lines += [f"# f({a[0]!r}) == {e!r}" for a, e in shown]
    demo = f"def f({arg}): return {body}"
    prompt = "\n".join(lines) + "\n"
    return demo, {"prompt": prompt, "demo": demo, "tests": json.dumps(hidden)}

  def corrupt(self, demo: str, rng: Any, rate: float,
              row: dict[str, Any] | None = None) -> str:
    """With prob. `rate`: a syntax error, a runtime error or wrong logic.

    'syntax'/'runtime' set code/no_error and code/pass_rate to 0. 'logic'
    mutates an operator or constant; with `row` given, the mutation is checked
    to fail some hidden test (else a syntax error is used), so every corruption
    lowers a reward.
    """
    rng = as_random(rng)
    if rng.random() >= rate:
      return demo
    kind = rng.choice(self.corrupt_kinds)
    head, sep, body = demo.partition("return ")
    if kind == "logic" and sep:
      tests = json.loads(row["tests"]) if row is not None else None
      options = [(a, b) for a, b in _MUTATIONS if a in body]
      digits = [i for i, ch in enumerate(body) if ch.isdigit()]
      rng.shuffle(options)
      candidates = [head + sep + body.replace(a, b, 1) for a, b in options]
      for i in rng.sample(digits, len(digits)):
        d = rng.choice([c for c in "0123456789" if c != body[i]])
        candidates.append(head + sep + body[:i] + d + body[i + 1:])
      for prog in candidates:
        if prog != demo and (tests is None or not _passes_all(prog, tests)):
          return prog
      kind = "syntax"
    if kind == "runtime" and sep:
      arg = head[head.find("(") + 1:head.find(")")]
      return head + sep + re.sub(rf"\b{arg}\b", "y", body, count=1)
    a, b = rng.choice([(a, b) for a, b in _BREAKS if a in demo])
    return demo.replace(a, b, 1)
