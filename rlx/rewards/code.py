"""Code execution rewards: test pass rate and a bug flag, run in the sandbox.

The program is the last fenced code block of the completion (```python,
```py or a bare ```), or the whole completion if it has no fence. Test cases
come from a dataset column (default `test_cases`) in any of these forms:

  [{"input": "1 2\\n", "output": "3\\n"}, ...]      stdin -> expected stdout
  {"inputs": [...], "outputs": [...]}             (APPS/TACO style)
  [["1 2\\n", "3\\n"], ...]                        pairs
  ["assert add(1, 2) == 3", ...]                  assert-style, one test each
  "def check(candidate): ..."                     one assert-style test
                                                  (+ `check(ENTRY)` when an
                                                  `entry_point` column is given)
  a JSON string of any of the above, or {"test_cases": ...}

Each test case is one sandboxed run. A stdio test passes if the run ends with
status `ok` and its stdout equals the expected output up to trailing
whitespace on each line and trailing blank lines. An assert test passes if
the program and the test code run to the end without error.

pass rate = passed / number of tests.
bug = 1 if any run ended with a compile error, runtime error (uncaught
exception, nonzero exit, killed), memory limit, timeout or output limit;
a wrong answer or failed assert is not a bug.
Runs that fail for sandbox reasons (or tests that do not compile) make the
program's rewards None (missing), never a penalty.

Results are cached (by program, tests and config), so `code_pass_rate` and
`code_bug` on the same batch execute each program once.
"""
from __future__ import annotations

import collections
import dataclasses
import hashlib
import json
import re
import threading
from typing import Any, Sequence

from rlx.rewards import sandbox as sandbox_lib
from rlx.rewards.registry import REWARD_FNS
from rlx.rewards.rules import completion_texts, get_column, named_partial

_FENCE = re.compile(r"```[ \t]*([A-Za-z0-9_+-]*)[^\n]*\n(.*?)```", re.DOTALL)


def extract_code(text: str) -> str:
  """Last ```python / ```py / bare ``` block of the text, else the whole text."""
  blocks = _FENCE.findall(text)
  py = [b for lang, b in blocks if lang.lower() in ("python", "py", "python3", "")]
  if py:
    return py[-1]
  if blocks:
    return blocks[-1][1]
  return text


@dataclasses.dataclass(frozen=True)
class TestCase:
  """stdin -> expected stdout (kind 'stdio') or assert-style code (kind 'assert')."""
  kind: str
  stdin: str = ""
  expected: str = ""
  code: str = ""


def normalize_tests(tests: Any, entry_point: str | None = None) -> list[TestCase]:
  """Test cases from any supported column format (see module docstring)."""
  if tests is None:
    return []
  if isinstance(tests, str):
    s = tests.strip()
    if s[:1] in ("[", "{"):
      try:
        return normalize_tests(json.loads(s), entry_point)
      except json.JSONDecodeError:
        pass
    code = tests
    if entry_point:
      code = f"{tests}\n\ncheck({entry_point})\n"
    return [TestCase("assert", code=code)]
  if isinstance(tests, dict):
    for key in ("test_cases", "tests", "test"):
      if key in tests:
        return normalize_tests(tests[key], entry_point)
    if "inputs" in tests and "outputs" in tests:
      ins, outs = list(tests["inputs"]), list(tests["outputs"])
      if len(ins) != len(outs):
        raise ValueError(f"test cases: {len(ins)} inputs but {len(outs)} outputs.")
      return [TestCase("stdio", stdin=_as_text(i), expected=_as_text(o))
              for i, o in zip(ins, outs)]
    if "input" in tests and "output" in tests:
      return [TestCase("stdio", stdin=_as_text(tests["input"]),
                       expected=_as_text(tests["output"]))]
    raise ValueError(f"test cases: unsupported dict with keys {sorted(tests)}; "
                     "expected inputs/outputs, input/output or test_cases.")
  out: list[TestCase] = []
  for t in tests:
    if isinstance(t, TestCase):
      out.append(t)
    elif isinstance(t, str):
      out.append(TestCase("assert", code=t))
    elif isinstance(t, dict):
      out.extend(normalize_tests(t, entry_point))
    elif isinstance(t, (list, tuple)) and len(t) == 2:
      out.append(TestCase("stdio", stdin=_as_text(t[0]), expected=_as_text(t[1])))
    else:
      raise ValueError(f"test cases: unsupported test {t!r}.")
  return out


def _as_text(x: Any) -> str:
  if isinstance(x, str):
    return x
  if isinstance(x, (list, tuple)):
    return "\n".join(str(v) for v in x) + "\n"
  return str(x)


def outputs_match(actual: str, expected: str) -> bool:
  """Equal up to trailing whitespace on each line and trailing blank lines."""
  a = [l.rstrip() for l in actual.replace("\r\n", "\n").split("\n")]
  e = [l.rstrip() for l in expected.replace("\r\n", "\n").split("\n")]
  while a and not a[-1]:
    a.pop()
  while e and not e[-1]:
    e.pop()
  return a == e


@dataclasses.dataclass(frozen=True)
class CodeReport:
  """Per-program outcome: pass rate and bug flag (None: could not evaluate)."""
  pass_rate: float | None
  bug: float | None
  results: tuple[sandbox_lib.ExecResult, ...]


def _job(code: str, t: TestCase) -> sandbox_lib.Job:
  if t.kind == "stdio":
    return sandbox_lib.Job(code, stdin=t.stdin)
  return sandbox_lib.Job(code, test=t.code)


def _passed(t: TestCase, r: sandbox_lib.ExecResult) -> bool:
  if r.status != "ok":
    return False
  return t.kind == "assert" or outputs_match(r.stdout, t.expected)


def _report(tests: list[TestCase], results: list[sandbox_lib.ExecResult]) -> CodeReport:
  if not tests:
    return CodeReport(None, None, ())
  if any(r.status in ("sandbox_error", "bad_test") for r in results):
    return CodeReport(None, None, tuple(results))
  passed = sum(_passed(t, r) for t, r in zip(tests, results))
  bug = any(r.bug for r in results)
  return CodeReport(passed / len(tests), 1.0 if bug else 0.0, tuple(results))


class _Cache:
  """Small thread-safe LRU cache of CodeReports."""

  def __init__(self, size: int = 4096):
    self.size = size
    self._d: collections.OrderedDict[str, CodeReport] = collections.OrderedDict()
    self._lock = threading.Lock()

  def get(self, key: str) -> CodeReport | None:
    with self._lock:
      v = self._d.get(key)
      if v is not None:
        self._d.move_to_end(key)
      return v

  def put(self, key: str, v: CodeReport) -> None:
    with self._lock:
      self._d[key] = v
      self._d.move_to_end(key)
      while len(self._d) > self.size:
        self._d.popitem(last=False)


_CACHE = _Cache()


def _key(code: str, tests: list[TestCase], config: sandbox_lib.SandboxConfig) -> str:
  blob = json.dumps([code, [dataclasses.astuple(t) for t in tests], repr(config)])
  return hashlib.sha256(blob.encode()).hexdigest()


def evaluate_programs(codes: Sequence[str], tests: Sequence[list[TestCase]], *,
                      sandbox: sandbox_lib.Sandbox | None = None,
                      use_cache: bool = True) -> list[CodeReport]:
  """Runs every program on its tests (all runs in parallel in the pool)."""
  sb = sandbox or sandbox_lib.default_sandbox()
  reports: list[CodeReport | None] = [None] * len(codes)
  keys = [_key(c, t, sb.config) for c, t in zip(codes, tests)]
  jobs, owners = [], []
  for i, (code, ts) in enumerate(zip(codes, tests)):
    if use_cache and (hit := _CACHE.get(keys[i])) is not None:
      reports[i] = hit
      continue
    for t in ts:
      jobs.append(_job(code, t))
      owners.append(i)
  results = sb.run_many(jobs)
  per: dict[int, list[sandbox_lib.ExecResult]] = collections.defaultdict(list)
  for i, r in zip(owners, results):
    per[i].append(r)
  for i in range(len(codes)):
    if reports[i] is None:
      reports[i] = _report(list(tests[i]), per.get(i, []))
      if use_cache and reports[i].pass_rate is not None:
        _CACHE.put(keys[i], reports[i])
  return reports  # type: ignore[return-value]


def _reports(completions: Sequence[Any], columns: dict[str, Any], tests_column: str,
             entry_point_column: str, sandbox: sandbox_lib.Sandbox | None,
             fn_name: str) -> list[CodeReport]:
  texts = completion_texts(completions)
  tests_col = get_column(columns, tests_column, len(texts), fn_name)
  entry = columns.get(entry_point_column)
  entry = list(entry) if entry is not None else [None] * len(texts)
  tests = [normalize_tests(t, e) for t, e in zip(tests_col, entry)]
  return evaluate_programs([extract_code(t) for t in texts], tests, sandbox=sandbox)


@REWARD_FNS.register("code_pass_rate")
def code_pass_rate_reward(prompts: Sequence[Any], completions: Sequence[Any], *,
                          tests_column: str = "test_cases",
                          entry_point_column: str = "entry_point",
                          sandbox: sandbox_lib.Sandbox | None = None,
                          **columns: Any) -> list[float | None]:
  """Fraction of test cases the completion's program passes, in [0, 1]."""
  del prompts
  return [r.pass_rate for r in _reports(completions, columns, tests_column,
                                        entry_point_column, sandbox, "code_pass_rate")]


@REWARD_FNS.register("code_bug")
def code_bug_reward(prompts: Sequence[Any], completions: Sequence[Any], *,
                    tests_column: str = "test_cases",
                    entry_point_column: str = "entry_point",
                    sandbox: sandbox_lib.Sandbox | None = None,
                    **columns: Any) -> list[float | None]:
  """Bug flag: 1.0 if any test run had a compile or runtime error, else 0.0."""
  del prompts
  return [r.bug for r in _reports(completions, columns, tests_column,
                                  entry_point_column, sandbox, "code_bug")]


@REWARD_FNS.register("code_no_bug")
def code_no_bug_reward(prompts: Sequence[Any], completions: Sequence[Any],
                       **kwargs: Any) -> list[float | None]:
  """1.0 - bug flag (a reward to maximize)."""
  return [None if b is None else 1.0 - b
          for b in code_bug_reward(prompts, completions, **kwargs)]


def make_code_reward(kind: str = "pass_rate", *, sandbox: sandbox_lib.Sandbox | None = None,
                     tests_column: str = "test_cases", name: str | None = None):
  """A code reward ('pass_rate', 'bug' or 'no_bug') bound to a sandbox/config."""
  fns = {"pass_rate": code_pass_rate_reward, "bug": code_bug_reward,
         "no_bug": code_no_bug_reward}
  if kind not in fns:
    raise KeyError(f"Unknown code reward kind {kind!r}. Valid choices: {', '.join(fns)}.")
  return named_partial(fns[kind], name or f"code_{kind}", sandbox=sandbox,
                       tests_column=tests_column)
