"""Math answer equivalence with `math-verify` (boxed answers, fractions, LaTeX,
percentages, sets and intervals as math-verify supports them).

math-verify bounds parsing and comparison time with `signal.alarm`, which only
works in the main thread, and some inputs make sympy run for ever (e.g.
`9^{9^{9^9}}`). So:

- in the main thread, math-verify runs in-process with its own timeouts;
- in any other thread (the trainer scores rewards from worker threads), the
  check runs in a helper process (`python -c ... _worker_loop`), where
  math-verify's timeouts work; the host also enforces a hard deadline, kills
  a stuck helper and starts a new one. Helpers are pooled and reused.

A parse failure, timeout or crash gives 0.0, never an exception. A missing or
empty gold answer gives None (a missing reward).
"""
from __future__ import annotations

import atexit
import json
import logging
import os
import queue
import re
import selectors
import subprocess
import sys
import threading
import time
from typing import Any, Sequence

from rlx.rewards.registry import REWARD_FNS
from rlx.rewards.rules import (completion_texts, get_column, length_limit_reward,
                               make_conditioned_reward, named_partial)

log = logging.getLogger(__name__)

_NUMBER = re.compile(r"\s*[-+]?(\d+(\.\d*)?|\.\d+)([eE][-+]?\d+)?\s*")


def _gold_candidates(gold: str) -> list[str]:
  """Ways to read a gold answer: as given, and wrapped in $...$ for bare LaTeX."""
  gold = str(gold).strip()
  if _NUMBER.fullmatch(gold) or "$" in gold or "\\boxed" in gold or "\\(" in gold:
    return [gold]
  return [f"${gold}$", gold]


def _last_tag(text: str, tag: str) -> str | None:
  found = re.findall(rf"<{re.escape(tag)}>(.*?)</{re.escape(tag)}>", text, re.DOTALL)
  return found[-1].strip() if found and found[-1].strip() else None


def verify_answer(gold: str, completion: str, *, timeout_s: int | None = 5,
                  anchored: bool = False, float_rounding: int = 6,
                  answer_tag: str | None = "answer") -> float | None:
  """1.0 if the completion's answer equals `gold`, 0.0 if not, None if `gold`
  does not parse. Runs in the calling thread (`timeout_s` needs the main thread;
  pass None elsewhere).

  If the completion has `<answer_tag>...</answer_tag>` blocks, only the last
  block's content is read (bare LaTeX allowed). Otherwise, \\boxed{} answers
  come first (several boxed answers are read as a set, so hedging fails),
  then, unless `anchored`, the last LaTeX/plain expression.
  """
  # Imported lazily: sympy takes about a second to import.
  # pylint: disable-next=g-import-not-at-top
  from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse, verify
  t = timeout_s if timeout_s and timeout_s > 0 else None
  gold_parsed = []
  for g in _gold_candidates(gold):
    gold_parsed = parse(g, parsing_timeout=t)
    if gold_parsed:
      break
  if not gold_parsed:
    return None
  if anchored:
    config = [LatexExtractionConfig(try_extract_without_anchor=False, boxed_match_priority=0),
              ExprExtractionConfig(try_extract_without_anchor=False)]
  else:
    config = [LatexExtractionConfig(boxed_match_priority=0), ExprExtractionConfig()]
  pred = []
  tagged = _last_tag(completion, answer_tag) if answer_tag else None
  for text in (_gold_candidates(tagged) if tagged else [completion]):
    pred = parse(text, extraction_config=config, parsing_timeout=t)
    if pred:
      break
  if not pred:
    return 0.0
  ok = verify(gold_parsed, pred, float_rounding=float_rounding, timeout_seconds=t)
  return 1.0 if ok else 0.0


def _safe_verify(gold: str, completion: str, **kw: Any) -> float | None:
  try:
    return verify_answer(gold, completion, **kw)
  except Exception:  # pylint: disable=broad-except
    return 0.0


# ----------------------------------------------------------------------------
# Helper processes for non-main threads.
# ----------------------------------------------------------------------------
def _worker_loop() -> None:
  """Helper main loop: one JSON request per stdin line, one JSON reply per line."""
  import logging as _logging  # pylint: disable=g-import-not-at-top,reimported
  _logging.disable(_logging.WARNING)
  for line in sys.stdin:
    req = json.loads(line)
    score = _safe_verify(req["gold"], req["completion"], timeout_s=req["timeout_s"],
                         anchored=req["anchored"], float_rounding=req["float_rounding"],
                         answer_tag=req["answer_tag"])
    sys.stdout.write(json.dumps({"score": score}) + "\n")
    sys.stdout.flush()


class _Helper:
  """One helper process speaking the `_worker_loop` protocol."""

  def __init__(self):
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
    self.proc = subprocess.Popen(
        [sys.executable, "-c",
         "from rlx.rewards.math_reward import _worker_loop; _worker_loop()"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
        env=env, text=True, bufsize=1, start_new_session=True)
    self._sel = selectors.DefaultSelector()
    self._sel.register(self.proc.stdout, selectors.EVENT_READ)

  def ask(self, req: dict[str, Any], deadline_s: float) -> float | None:
    """The helper's answer; raises TimeoutError / OSError if it hangs or dies."""
    self.proc.stdin.write(json.dumps(req) + "\n")
    self.proc.stdin.flush()
    end = time.monotonic() + deadline_s
    while True:
      left = end - time.monotonic()
      if left <= 0 or not self._sel.select(left):
        raise TimeoutError("math-verify helper did not answer in time")
      line = self.proc.stdout.readline()
      if not line:
        raise OSError("math-verify helper exited")
      return json.loads(line)["score"]

  def kill(self) -> None:
    try:
      self.proc.kill()
      self.proc.wait(timeout=5)
    except Exception:  # pylint: disable=broad-except
      pass
    self._sel.close()


class _HelperPool:
  """Reusable helpers, created on demand up to `max_size` (thread-safe)."""

  def __init__(self, max_size: int):
    self.max_size = max_size
    self._idle: queue.Queue[_Helper] = queue.Queue()
    self._count = 0
    self._lock = threading.Lock()
    self._all: list[_Helper] = []

  def acquire(self) -> _Helper:
    try:
      return self._idle.get_nowait()
    except queue.Empty:
      pass
    with self._lock:
      if self._count < self.max_size:
        self._count += 1
        h = _Helper()
        self._all.append(h)
        return h
    return self._idle.get()

  def release(self, h: _Helper) -> None:
    self._idle.put(h)

  def discard(self, h: _Helper) -> None:
    h.kill()
    with self._lock:
      self._count -= 1
      if h in self._all:
        self._all.remove(h)

  def close(self) -> None:
    with self._lock:
      for h in self._all:
        h.kill()
      self._all.clear()
      self._count = 0
    self._idle = queue.Queue()


_POOL = _HelperPool(max_size=max(1, min(4, os.cpu_count() or 1)))
atexit.register(_POOL.close)

# Startup of a helper (imports sympy) is not counted against the deadline of
# the first request: allow this much extra time for it.
_HELPER_STARTUP_S = 60.0


def _verify_in_helper(gold: str, completion: str, *, timeout_s: int,
                      anchored: bool, float_rounding: int,
                      answer_tag: str | None) -> float | None:
  req = dict(gold=gold, completion=completion, timeout_s=timeout_s,
             anchored=anchored, float_rounding=float_rounding, answer_tag=answer_tag)
  h = _POOL.acquire()
  fresh = not getattr(h, "used", False)
  try:
    # Parsing gold + prediction + verify each have `timeout_s` inside the helper.
    score = h.ask(req, 3 * timeout_s + 2 + (_HELPER_STARTUP_S if fresh else 0.0))
    h.used = True
  except Exception as e:  # pylint: disable=broad-except
    log.warning("math-verify helper failed (%s); restarting it", e)
    _POOL.discard(h)
    return 0.0
  _POOL.release(h)
  return score


def math_verify_score(gold: str, completion: str, *, timeout_s: int = 5,
                      anchored: bool = False, float_rounding: int = 6,
                      answer_tag: str | None = "answer") -> float | None:
  """Thread-safe, never-hanging `verify_answer` (see module docstring)."""
  kw = dict(timeout_s=timeout_s, anchored=anchored, float_rounding=float_rounding,
            answer_tag=answer_tag)
  if threading.current_thread() is threading.main_thread():
    return _safe_verify(gold, completion, **kw)
  return _verify_in_helper(gold, completion, **kw)


@REWARD_FNS.register("math_verify")
def math_verify_reward(prompts: Sequence[Any], completions: Sequence[Any], *,
                       answer_column: str | Sequence[str] = ("answer", "solution"),
                       timeout_s: int = 5, anchored: bool = False,
                       float_rounding: int = 6, answer_tag: str | None = "answer",
                       **columns: Any) -> list[float | None]:
  """1.0 if the completion's final answer is equivalent to the gold answer.

  The gold answer comes from the first present column among `answer_column`
  (plain "42", LaTeX "\\frac{1}{2}", or a full solution with \\boxed{}). The
  prediction is read as in `verify_answer` (last <answer> block, else
  \\boxed{}, else the last expression). 0.0 on any parse failure or timeout,
  None when the gold answer is missing or empty.
  """
  del prompts
  texts = completion_texts(completions)
  gold = get_column(columns, answer_column, len(texts), "math_verify")
  out: list[float | None] = []
  for text, g in zip(texts, gold):
    if g is None or str(g).strip() == "":
      out.append(None)
      continue
    out.append(math_verify_score(str(g), text, timeout_s=timeout_s, anchored=anchored,
                                 float_rounding=float_rounding, answer_tag=answer_tag))
  return out


def make_math_verify_reward(*, answer_column: str | Sequence[str] = ("answer", "solution"),
                            timeout_s: int = 5, anchored: bool = False,
                            name: str = "math_verify"):
  return named_partial(math_verify_reward, name, answer_column=answer_column,
                       timeout_s=timeout_s, anchored=anchored)


# GDPO's math length reward: 1 if short enough, counted only on correct answers.
REWARD_FNS.register("math_length_if_correct")(make_conditioned_reward(
    length_limit_reward, math_verify_reward, 1.0, name="math_length_if_correct"))
