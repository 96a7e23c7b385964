"""math-verify reward: hand-labelled equivalences, threads, timeouts."""
import concurrent.futures
import threading
import time

import pytest

from rlx.rewards import REWARD_FNS
from rlx.rewards import math_reward

# (gold answer, completion, label). Labels are what a careful grader says.
CASES = [
    ("42", r"The answer is \boxed{42}.", True),
    ("42", r"The answer is \boxed{43}.", False),
    ("42", "So we get 42", True),
    (r"\frac{1}{2}", r"\boxed{0.5}", True),
    (r"\frac{1}{2}", r"\boxed{\dfrac{1}{2}}", True),
    (r"\frac{1}{2}", r"\boxed{1/2}", True),
    (r"\frac{1}{2}", r"\boxed{\frac{2}{4}}", True),
    (r"\frac{1}{2}", r"\boxed{\frac{1}{3}}", False),
    ("0.5", r"\boxed{\frac12}", True),
    (r"\sqrt{2}/2", r"\boxed{\frac{\sqrt{2}}{2}}", True),
    (r"\sqrt{2}/2", r"\boxed{\frac{1}{\sqrt{2}}}", True),
    (r"2\pi", r"\boxed{2\pi}", True),
    (r"2\pi", r"\boxed{6.28}", False),
    ("50\\%", r"\boxed{50\%}", True),
    ("50\\%", r"\boxed{0.5}", True),
    ("50\\%", r"\boxed{50}", True),
    ("50\\%", r"\boxed{40\%}", False),
    (r"\{1,2,3\}", r"\boxed{\{3,2,1\}}", True),
    (r"\{1,2,3\}", r"\boxed{\{1,2\}}", False),
    ("[1, 2)", r"\boxed{[1,2)}", True),
    ("[1, 2)", r"\boxed{[1,2]}", False),
    (r"(-\infty, 3]", r"\boxed{(-\infty,3]}", True),
    ("x^2+2x+1", r"\boxed{(x+1)^2}", True),
    ("x^2+2x+1", r"\boxed{(x-1)^2}", False),
    ("x=3", r"\boxed{3}", True),
    ("-7", r"\boxed{-7}", True),
    ("-7", r"\boxed{7}", False),
    ("1000", r"\boxed{1{,}000}", True),
    ("1000", r"\boxed{10^3}", True),
    (r"\frac{3}{4}", r"$\frac{3}{4}$", True),
    ("The final answer is $\\boxed{12}$", r"\boxed{12}", True),
    ("12", r"\boxed{}", False),
    ("12", "I don't know", False),
    ("12", "", False),
    ("12", r"\boxed{12 \text{ apples}}", True),
    (r"90^\circ", r"\boxed{90}", True),
    # Several boxed answers are read as a set: hedging is not rewarded.
    ("3", r"First \boxed{2}, then corrected: \boxed{3}", False),
    (r"\{2,3\}", r"\boxed{2}, \boxed{3}", True),
    (r"\begin{pmatrix} 1 \\ 2 \end{pmatrix}",
     r"\boxed{\begin{pmatrix} 1 \\ 2 \end{pmatrix}}", True),
    ("2", r"\boxed{\sqrt{4}}", True),
    ("2", r"\boxed{1+1}", True),
    ("1.5", r"\boxed{\frac{3}{2}}", True),
    ("1.5", r"\boxed{1.50}", True),
    ("1.5", r"\boxed{1.51}", False),
    ("(1,2)", r"\boxed{(1, 2)}", True),
    ("5", r"<think>x is 4? no</think><answer>5</answer>", True),
    (r"\frac{1}{2}", r"<think>try 1/3</think><answer>\frac{2}{4}</answer>", True),
    ("5", r"<answer>4</answer> but maybe \boxed{5}", False),
]


def _run(cases, **kw):
  return REWARD_FNS.get("math_verify")(
      [""] * len(cases), [c for _, c, _ in cases], answer=[g for g, _, _ in cases], **kw)


def test_hand_labelled_cases_main_thread():
  assert len(CASES) >= 30
  got = _run(CASES)
  wrong = [(g, c, l, r) for (g, c, l), r in zip(CASES, got) if r != float(l)]
  assert not wrong


def test_worker_thread_matches_main_thread_and_times_out():
  """From a worker thread the check runs in a helper process with timeouts."""
  hang = ("3", r"\boxed{9^{9^{9^{9}}}}", False)  # sympy never finishes this
  cases = CASES[:12] + [hang] + CASES[12:20]
  with concurrent.futures.ThreadPoolExecutor(2) as ex:
    t0 = time.monotonic()
    got = ex.submit(_run, cases, timeout_s=1).result(timeout=120)
    elapsed = time.monotonic() - t0
  assert got == [float(l) for _, _, l in cases]
  assert elapsed < 60
  # The helper survives (or was replaced) and keeps answering.
  with concurrent.futures.ThreadPoolExecutor(1) as ex:
    assert ex.submit(_run, CASES[:3]).result(timeout=60) == [1.0, 0.0, 1.0]


def test_parsing_timeout_main_thread():
  assert threading.current_thread() is threading.main_thread()
  t0 = time.monotonic()
  got = _run([("3", r"\boxed{9^{9^{9^{9}}}}", False)], timeout_s=1)
  assert got == [0.0]
  assert time.monotonic() - t0 < 10


def test_chat_messages_solution_column_and_missing_gold():
  fn = REWARD_FNS.get("math_verify")
  comps = [[{"role": "assistant", "content": r"\boxed{\frac{1}{2}}"}],
           [{"role": "assistant", "content": r"\boxed{2}"}], "x"]
  assert fn(["p"] * 3, comps, solution=[r"so $\boxed{0.5}$", "3", None]) == [1.0, 0.0, None]
  with pytest.raises(KeyError, match="answer"):
    fn(["p"], ["1"], label=["1"])


def test_math_length_if_correct():
  fn = REWARD_FNS.get("math_length_if_correct")
  comps = [r"\boxed{4}", r"long long long \boxed{4}", r"\boxed{5}"]
  assert fn([""] * 3, comps, answer=["4"] * 3, max_length=12) == [1.0, 0.0, 0.0]
