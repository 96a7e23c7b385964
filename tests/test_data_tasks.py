"""Built-in synthetic tasks: determinism, splits, rewards, corruption rates."""
import json
import random

import numpy as np
import pytest

from rlx.data.tasks import TASKS, get_task, split_of
from rlx.data.tasks import arith, code, toolcall
from rlx.rewards.registry import REWARD_FNS

TASK_NAMES = ("toolcall", "arith", "code")


def _rewards(name, rows, completions):
  prompts = [r["prompt"] for r in rows]
  cols = {k: [r[k] for r in rows] for k in rows[0] if k != "prompt"}
  return REWARD_FNS.get(name)(prompts, completions, **cols)


def test_registries():
  assert set(TASK_NAMES) <= set(TASKS.names())
  for name in ("toolcall/format", "toolcall/correct", "arith/correct", "arith/length",
               "arith/length_if_correct", "code/pass_rate", "code/no_error"):
    assert name in REWARD_FNS
  for t in TASK_NAMES:
    assert all(k in REWARD_FNS for k in get_task(t).default_rewards)
  with pytest.raises(KeyError, match="Valid choices: arith, bfcl, code, humaneval, reasoning_gym, toolcall"):
    get_task("toolcal")
  with pytest.raises(ValueError, match="valid choices: train, test"):
    get_task("arith").make_examples(0, 3, "valid")


@pytest.mark.parametrize("name", TASK_NAMES)
def test_deterministic_and_disjoint(name):
  task = get_task(name)
  a = task.make_examples(3, 300, "train")
  assert a == task.make_examples(3, 300, "train")
  assert a != task.make_examples(4, 300, "train")
  json.dumps(a)  # plain JSON values only
  assert len({r["prompt"] for r in a}) == 300
  test = task.make_examples(0, 150, "test") + task.make_examples(9, 150, "test")
  train = a + task.make_examples(0, 300, "train")
  assert not {r["prompt"] for r in train} & {r["prompt"] for r in test}
  # Split by the underlying problem, not only the prompt text.
  key = {"toolcall": "answer", "arith": "expression", "code": "demo"}[name]
  assert not {r[key] for r in train} & {r[key] for r in test}
  assert all(split_of(str(r[key]), task.test_fraction) == "test" for r in test)


@pytest.mark.parametrize("name", TASK_NAMES)
def test_demos_get_full_correctness(name):
  task = get_task(name)
  rows = task.make_examples(1, 200, "train") + task.make_examples(1, 100, "test")
  demos = [r["demo"] for r in rows]
  for fn in task.default_rewards:
    if fn == "arith/length":
      continue  # demos that show work may exceed the limit (by design)
    assert _rewards(fn, rows, demos) == [1.0] * len(rows), fn


def test_toolcall_rewards_hand_cases():
  ans = json.dumps({"name": "weather", "args": {"city": "Paris", "unit": "c"}})
  cases = [  # completion, format, correct
      ('<call>{"name":"weather","args":{"city":"Paris","unit":"c"}}</call>', 1, 1),
      (' <call>{"name": "weather", "args": {"unit": "c", "city": "Paris"}}</call>\n', 1, 1),
      ('<call>{"name":"weather","args":{"city":"Paris","unit":"c"}}', 0, 1),
      ('{"name":"weather","args":{"city":"Paris","unit":"c"}}', 0, 1),
      ('<call>{"name":"weather","args":{"city":"Paris","unit":"c"}</call>', 0, 0),
      ('<call>{"name":"timer","args":{"city":"Paris","unit":"c"}}</call>', 1, 0),
      ('<call>{"name":"weather","args":{"city":"Rome","unit":"c"}}</call>', 1, 2.5 / 3),
      ('<call>{"name":"weather","args":{"city":"Paris"}}</call>', 1, 2 / 3),
      ('<call>{"name":"weather","args":{}}</call>', 1, 1 / 3),
      ('<call>{"name":"weather","args":{"city":"Paris","unit":"c","x":1}}</call>', 1,
       (1 + 2 / 3 + 1) / 3),
      ('<call>{"args":{"city":"Paris","unit":"c"},"name":"weather"}</call>', 0, 1),
      ('<call>{"name":"weather","args":{"city":["Paris"],"unit":"c"}}</call>', 0, 2.5 / 3),
      ('<call>{"name":"weather","args":[1]}</call>', 0, 1 / 3),
      ("I don't know", 0, 0),
      ("", 0, 0),
  ]
  comps = [c for c, _, _ in cases]
  fmt = REWARD_FNS.get("toolcall/format")([""] * len(comps), comps, answer=[ans] * len(comps))
  cor = REWARD_FNS.get("toolcall/correct")([""] * len(comps), comps, answer=[ans] * len(comps))
  np.testing.assert_allclose(fmt, [f for _, f, _ in cases])
  np.testing.assert_allclose(cor, [c for _, _, c in cases])
  # Types matter: "7" is not 7; conversational completions; missing answers.
  ans2 = {"name": "timer", "args": {"mins": 7}}
  conv = [[{"role": "assistant", "content": '<call>{"name":"timer","args":{"mins":"7"}}</call>'}]]
  assert REWARD_FNS.get("toolcall/correct")([""], conv, answer=[ans2]) == [pytest.approx(2 / 3)]
  assert REWARD_FNS.get("toolcall/correct")([""], ["x"], answer=[None]) == [None]
  with pytest.raises(KeyError, match=r"needs one of the dataset columns \['answer'\]"):
    REWARD_FNS.get("toolcall/correct")([""], ["x"], solution=["y"])


def test_arith_solver_matches_python():
  rng = random.Random(0)
  for _ in range(300):
    k = rng.randint(1, 3)
    nums = [rng.randint(1, 30) for _ in range(k + 1)]
    ops = [rng.choice("+-*") for _ in range(k)]
    expr = "".join(f"{a}{o}" for a, o in zip(nums, ops)) + str(nums[-1])
    value, steps = arith.solve(nums, ops)
    assert value == eval(expr) and len(steps) == k  # pylint: disable=eval-used
  assert arith.solve([17, 8, 3], ["+", "*"]) == (41, ["8*3=24", "17+24=41"])
  assert arith.solve([20, 3, 2], ["-", "-"]) == (15, ["20-3=17", "17-2=15"])


def test_arith_rewards_hand_cases():
  comps = ["Answer: 41", "8*3=24\n17+24=41\nAnswer: 41", "Answer: 40", "answer: 41",
           "Answer: 41\nAnswer: 42", "41", "Answer:41 ", "x" * 6 + "Answer: 41",
           "x" * 7 + "Answer: 41"]
  n = len(comps)
  cols = dict(answer=[41] * n, max_len=[16] * n)
  correct = REWARD_FNS.get("arith/correct")([""] * n, comps, **cols)
  length = REWARD_FNS.get("arith/length")([""] * n, comps, **cols)
  cond = REWARD_FNS.get("arith/length_if_correct")([""] * n, comps, **cols)
  assert correct == [1, 1, 0, 0, 0, 0, 1, 1, 1]
  assert length == [1, 0, 1, 1, 0, 1, 1, 1, 0]
  assert cond == [1, 0, 0, 0, 0, 0, 1, 1, 0]
  assert REWARD_FNS.get("arith/correct")([""], ["Answer: -5"], answer=[-5]) == [1.0]
  with pytest.raises(ValueError, match="max_len=8"):
    get_task("arith", max_len=8)


def test_code_rewards_hand_cases():
  tests = json.dumps([[[1], 2], [[2], 4], [[3], 7]])
  comps = [
      "def f(x): return 2*x if x < 3 else 7",  # all pass
      "def f(x): return 2*x",                  # 2 of 3
      "def f(x) return 2*x",                   # syntax error
      "def f(x): return 6//(x-3) * 0 + 2*x",   # ZeroDivisionError on x=3: 2 of 3, error
      "def g(x): return 2*x",                  # no f
      "```python\ndef f(x):\n  print('@@RLX@@ {}')\n  return 2*x if x < 3 else 7\n```",
      "def f(x): return y",                    # NameError at call time
  ]
  n = len(comps)
  pr = REWARD_FNS.get("code/pass_rate")([""] * n, comps, tests=[tests] * n)
  ne = REWARD_FNS.get("code/no_error")([""] * n, comps, tests=[tests] * n)
  np.testing.assert_allclose(pr, [1, 2 / 3, 0, 2 / 3, 0, 1, 0])
  assert ne == [1, 1, 0, 0, 0, 1, 0]


def test_code_execute_timeout_and_crash():
  programs = ["def f(x):\n  while True: pass", "import os\nos._exit(3)",
              "def f(x): return x + 1"]
  tests = [[[[1], 2]]] * 3
  res = code._execute(programs, tests, timeout_s=0.5)
  assert [r["error"] for r in res] == ["TimeoutError", "Crash", None]
  assert [r["passed"] for r in res] == [0, 0, 1]


def _corrupted_rewards(name, rate, n, **options):
  task = get_task(name, **options)
  rows = task.make_sft_examples(5, n, rate)
  comps = [r["completion"] for r in rows]
  return {fn: np.array(_rewards(fn, rows, comps)) for fn in REWARD_FNS.names()
          if fn.startswith(name + "/")}, rows


@pytest.mark.parametrize("rate", [0.0, 0.3])
def test_toolcall_corrupt_rate(rate):
  n = 2000
  r, rows = _corrupted_rewards("toolcall", rate, n)
  changed = np.array([row["completion"] != row["demo"] for row in rows])
  worse = (r["toolcall/format"] < 1) | (r["toolcall/correct"] < 1)
  np.testing.assert_array_equal(worse, changed)  # every corruption costs reward
  assert abs(worse.mean() - rate) < 0.05  # binomial sd 0.010
  # One kind of four is a format error; the others keep the format.
  assert abs((r["toolcall/format"] < 1).mean() - rate / 4) < 0.03


@pytest.mark.parametrize("rate", [0.0, 0.3])
def test_arith_corrupt_rate(rate):
  n = 2000
  r, rows = _corrupted_rewards("arith", rate, n, work_prob=0.0)
  changed = np.array([row["completion"] != row["demo"] for row in rows])
  worse = (r["arith/correct"] < 1) | (r["arith/length"] < 1)
  np.testing.assert_array_equal(worse, changed)
  assert abs(worse.mean() - rate) < 0.05
  # 'wrong' and 'format' cost correctness; 'long' keeps it but breaks the limit.
  assert abs((r["arith/correct"] < 1).mean() - 2 * rate / 3) < 0.04
  long_ok = (r["arith/correct"] == 1) & (r["arith/length"] == 0)
  assert abs(long_ok.mean() - rate / 3) < 0.04
  np.testing.assert_array_equal(r["arith/length_if_correct"],
                                r["arith/correct"] * r["arith/length"])


def test_arith_work_demos_break_limit():
  rows = get_task("arith", work_prob=1.0).make_examples(0, 300)
  demos = [r["demo"] for r in rows]
  length = np.array(_rewards("arith/length", rows, demos))
  assert length.mean() < 0.1  # showing work costs the length reward
  assert all(d.count("\n") >= 1 for d in demos)


@pytest.mark.parametrize("rate", [0.0, 0.3])
def test_code_corrupt_rate(rate):
  n = 1000
  r, rows = _corrupted_rewards("code", rate, n)
  changed = np.array([row["completion"] != row["demo"] for row in rows])
  worse = (r["code/pass_rate"] < 1) | (r["code/no_error"] < 1)
  np.testing.assert_array_equal(worse, changed)
  assert abs(worse.mean() - rate) < 0.06  # binomial sd 0.015
  # Syntax and runtime errors (2 kinds of 3, plus logic mutations that raise).
  assert (r["code/no_error"] < 1).mean() > 2 * rate / 3 - 0.05
  if rate:
    assert ((r["code/no_error"] == 1) & (r["code/pass_rate"] < 1)).any()  # wrong logic


def test_corrupt_accepts_numpy_rng():
  task = get_task("toolcall")
  demo = task.make_examples(0, 1)[0]["demo"]
  a = task.corrupt(demo, np.random.default_rng(0), 1.0)
  assert a == task.corrupt(demo, np.random.default_rng(0), 1.0) and a != demo


def test_task_options_reach_the_task_and_bad_ones_are_named():
  rows = get_task("arith", max_operand=9, num_ops=(1, 1)).make_examples(seed=0, n=50)
  for r in rows:
    a, b = (int(x) for x in r["expression"].replace("*", "+").replace("-", "+").split("+"))
    assert 1 <= a <= 9 and 1 <= b <= 9
  with pytest.raises(TypeError, match=r"task 'arith': unknown option 'max_opernd'. Valid "
                     r"options: max_len=.*num_ops="):
    get_task("arith", max_opernd=9)


def test_config_task_options_are_checked_before_compute():
  from rlx.train.config import check_names, load_config
  c = load_config("ablation.py", "task=arith")
  c.data.task_options = {"max_opernd": 9}
  with pytest.raises(TypeError, match=r"config.data.task_options: task 'arith': unknown option"):
    check_names(c)
