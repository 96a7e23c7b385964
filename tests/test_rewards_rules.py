"""Rule rewards: format, exact match, length limits, DAPO overlong, conditioning."""
import functools

import pytest
from hypothesis import given, settings, strategies as st
from hyp import examples

from rlx.rewards import REWARD_FNS
from rlx.rewards import rules


def msg(text):
  return [{"role": "assistant", "content": text}]


def test_format_tags_default():
  fn = REWARD_FNS.get("format")
  comps = [
      "<think>a</think><answer>b</answer>",
      "<think>a\nb</think>\n\n<answer>42</answer>\n",
      "<answer>b</answer><think>a</think>",  # wrong order
      "<think>a</think><answer>b</answer> trailing",
      "<think>a</think>",
      "<think>a</think><think>c</think><answer>b</answer>",
      "<think>a<answer>x</answer></think><answer>b</answer>",  # nested tag twice
  ]
  assert fn([""] * len(comps), comps) == [1.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0]
  # Chat-message completions give the same result as strings.
  assert fn([""] * len(comps), [msg(c) for c in comps]) == fn([""] * len(comps), comps)


def test_format_factory_and_partial():
  f = rules.make_format_reward(tags=("reasoning", "code"))
  assert f.__name__ == "format"
  assert f(["", ""], ["<reasoning>r</reasoning> <code>c</code>",
                      "<think>r</think><code>c</code>"]) == [1.0, 0.0]
  g = functools.partial(REWARD_FNS.get("format"), pattern=r"Answer: \d+")
  assert g(["", "", ""], ["Answer: 12", "Answer: 12.", "answer: 12"]) == [1.0, 0.0, 0.0]


def test_exact_match():
  fn = REWARD_FNS.get("exact_match")
  comps = ["<answer>The Eiffel Tower.</answer>", "eiffel tower", "<answer>Paris</answer>",
           "<answer> x </answer><answer>London</answer>", msg("  London  ")]
  gold = ["eiffel tower", "Eiffel Tower", "Lyon", "london", "London"]
  assert fn([""] * 5, comps, answer=gold) == [1.0, 1.0, 0.0, 1.0, 1.0]
  strict = fn([""] * 2, ["<answer>Eiffel tower</answer>", "<answer>7</answer>"],
              answer=["Eiffel Tower", 7], normalize=False)
  assert strict == [0.0, 1.0]
  assert fn([""], ["x"], solution=[None]) == [None]
  with pytest.raises(KeyError, match="exact_match needs one of the dataset columns"):
    fn([""], ["x"], label=["x"])
  with pytest.raises(ValueError, match="column 'answer' has 2 rows"):
    fn([""], ["x"], answer=["x", "y"])


def test_dapo_overlong_worked_example():
  # Lmax = 20, C = 4: 0 up to 16, then linear to -1 at 20, -1 beyond.
  f = rules.make_overlong_penalty(max_length=20, cache_length=4, length_column="n_tokens")
  lengths = [0, 16, 17, 18, 20, 21, 100]
  got = f([""] * 7, ["x"] * 7, n_tokens=lengths)
  assert got == pytest.approx([0.0, 0.0, -0.25, -0.5, -1.0, -1.0, -1.0])
  # Without a length column, characters are counted.
  g = REWARD_FNS.get("overlong_penalty")
  assert g(["", "", ""], ["a" * 8, "a" * 10, msg("a" * 11)], max_length=12, cache_length=4) == \
      pytest.approx([0.0, -0.5, -0.75])
  with pytest.raises(ValueError, match="cache_length"):
    g([""], ["a"], max_length=4, cache_length=8)


@settings(max_examples=examples(200))
@given(st.integers(1, 500), st.integers(0, 500), st.integers(0, 1000))
def test_dapo_overlong_invariants(lmax, c, length):
  c = min(c, lmax)
  r = rules.dapo_overlong_penalty(length, lmax, c)
  assert -1.0 <= r <= 0.0
  # Non-increasing in length and continuous at both ends of the soft interval.
  assert rules.dapo_overlong_penalty(length + 1, lmax, c) <= r
  if c > 0:
    assert rules.dapo_overlong_penalty(lmax - c, lmax, c) == 0.0
    assert rules.dapo_overlong_penalty(lmax, lmax, c) == pytest.approx(-1.0)
    if lmax - c < length <= lmax:
      assert r == pytest.approx(((lmax - c) - length) / c)


def test_length_limit_and_conditioned():
  ll = rules.make_length_limit(max_length=5, length_column="len")
  em = REWARD_FNS.get("exact_match")
  cond = rules.make_conditioned_reward(ll, em, threshold=1.0)
  assert cond.__name__ == "length_limit_if_exact_match_reward"
  comps = ["a", "a", "b", "b", "c"]
  cols = dict(answer=["a", "a", "a", "a", None], len=[3, 9, 3, 9, 1])
  assert ll([""] * 5, comps, **cols) == [1.0, 0.0, 1.0, 0.0, 1.0]
  # r_k if r_l >= t else 0; a missing condition counts as not met.
  assert cond([""] * 5, comps, **cols) == [1.0, 0.0, 0.0, 0.0, 0.0]
  # A missing r_k stays missing.
  none_k = rules.make_conditioned_reward(lambda p, c, **k: [None, 1.0], em, 0.5)
  assert none_k(["", ""], ["a", "a"], answer=["a", "a"]) == [None, 1.0]
  # The threshold is inclusive.
  half = rules.make_conditioned_reward(ll, lambda p, c, **k: [0.5, 0.49], 0.5)
  assert half(["", ""], ["a", "a"], len=[1, 1]) == [1.0, 0.0]


def test_registry_names_and_unknown():
  for name in ["format", "exact_match", "overlong_penalty", "length_limit", "math_verify",
               "math_length_if_correct", "toolrl_format", "toolrl_correctness",
               "code_pass_rate", "code_bug", "code_no_bug"]:
    assert name in REWARD_FNS
  with pytest.raises(KeyError, match="Did you mean 'format'"):
    REWARD_FNS.get("formatt")


def test_completion_text():
  assert rules.completion_text("x") == "x"
  assert rules.completion_text([{"role": "user", "content": "q"},
                                {"role": "assistant", "content": "a"},
                                {"role": "assistant", "content": "b"}]) == "ab"
  assert rules.completion_text({"role": "assistant", "content": None}) == ""


def test_reward_options_are_checked_against_the_function():
  REWARD_FNS.check_options("length_limit", {"max_length": 8})
  with pytest.raises(TypeError, match=r"reward function 'length_limit': unknown option "
                     r"'max_lenght'. Valid options: max_length=.*length_column="):
    REWARD_FNS.check_options("length_limit", {"max_lenght": 8})

  def no_columns(prompts, completions, *, scale=1.0):
    return [scale] * len(completions)

  def forwards(prompts, completions, **kwargs):  # may forward options: not checked
    return no_columns(prompts, completions, **kwargs)

  with pytest.raises(TypeError, match="'no_columns': unknown option 'bias'. Valid options: "
                     "scale=1.0"):
    REWARD_FNS.check_options("no_columns", {"bias": 1}, fn=no_columns)
  REWARD_FNS.check_options("forwards", {"bias": 1}, fn=forwards)


def test_config_reward_option_typo_fails_before_compute():
  from rlx.train.config import check_names, load_config
  cfg = load_config("gdpo.py", "task=arith")
  cfg.rewards["len"] = {"fn": "length_limit", "weight": 0.0, "kwargs": {"max_lenght": 4}}
  with pytest.raises(TypeError, match="config.rewards.len.kwargs: reward function "
                     "'length_limit': unknown option 'max_lenght'"):
    check_names(cfg)
  cfg.rewards["len"]["kwargs"] = {"max_length": 4}
  check_names(cfg)
