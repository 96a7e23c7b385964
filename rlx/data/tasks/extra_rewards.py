"""Length rewards for the `code` task (GDPO's code setting, at toy scale).

The GDPO paper's code task combines pass rate, a bug flag and a length limit
that only counts on programs passing every test (its Eq. 8 conditioning). The
built-in `code` task has pass rate and bug flag; these add the limit:

  code/length          1 if len(completion) <= max_len, else 0.
  code/length_if_pass  code/length if code/pass_rate == 1 (every hidden test
                       passes), else 0.

`max_len` is a keyword (config.rewards.NAME.kwargs), in characters; None
(missing) where the completion has no tests.
"""
from __future__ import annotations

from rlx.data.tasks import code
from rlx.rewards.rules import completion_text, get_column
from rlx.rewards.registry import REWARD_FNS

CODE_MAX_LEN = 32  # chars; ~75% of the task's reference programs fit.


@REWARD_FNS.register("code/length")
def code_length_reward(prompts, completions, *, max_len: int = CODE_MAX_LEN,
                       **columns) -> list[float | None]:
  """1 if the completion has at most `max_len` characters (None without tests)."""
  del prompts
  tests = get_column(columns, "tests", len(completions), "code/length")
  return [None if t is None else float(len(completion_text(c)) <= int(max_len))
          for c, t in zip(completions, tests)]


@REWARD_FNS.register("code/length_if_pass")
def code_length_if_pass_reward(prompts, completions, *, max_len: int = CODE_MAX_LEN,
                               **columns) -> list[float | None]:
  """code/length counted only when every hidden test passes (GDPO Eq. 8), else 0."""
  length = code_length_reward(prompts, completions, max_len=max_len, **columns)
  passed = code.pass_rate_reward(prompts, completions, **columns)
  return [None if l is None or p is None else l * float(p == 1.0)
          for l, p in zip(length, passed)]
