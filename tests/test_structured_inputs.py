"""Producers of estimator inputs in the RL loop (rlx/train/structured.py)."""
import numpy as np
import pytest

from rlx.train import structured


class CharTokenizer:
  """One token per character (id = code point), as the tiny test tokenizers."""

  def decode(self, ids):
    return "".join(chr(i) for i in ids)


def _round(completions, *, r=2, c=16, rewards=None, prompts=None, sample_reference=None,
           columns=None):
  n = len(completions)
  rewards = np.zeros((n, 1), np.float32) if rewards is None else np.asarray(rewards, np.float32)
  return structured.Round(
      prompts=prompts or [f"p{i // r}" for i in range(n)], completions=list(completions),
      completion_ids=[[ord(ch) for ch in s] for s in completions], columns=columns or {},
      rewards_NK=rewards, reward_names=tuple(f"r{k}" for k in range(rewards.shape[1])),
      sizes=structured.Sizes(n=n, r=r, c=c, k=rewards.shape[1]), tokenizer=CharTokenizer(),
      step=3, sample_reference=sample_reference)


def _run(key, spec, rnd):
  return structured.produce(structured.check_inputs({key: spec}), rnd)[key]


def test_phase_split_marks_tokens_after_each_delimiter():
  rnd = _round(["ab</think>cd", "no delimiter"], c=14)
  m = _run("phase_mask_NZT", {"name": "phase_split", "delimiters": ["</think>"]}, rnd)
  assert m.shape == (2, 2, 14) and m.dtype == bool
  np.testing.assert_array_equal(m[0, 0], [True] * 10 + [False] * 4)   # "ab</think>"
  np.testing.assert_array_equal(m[0, 1], [False] * 10 + [True] * 2 + [False] * 2)  # "cd"
  np.testing.assert_array_equal(m[1, 0], [True] * 12 + [False] * 2)
  assert not m[1, 1].any()
  # Two delimiters in order: three phases; the second is searched after the first.
  m = _run("phase_mask_NZT", {"name": "phase_split", "delimiters": ["|", "|"]},
           _round(["a|b|c", "a|bc"], c=5))
  assert m[0].argmax(0).tolist() == [0, 0, 1, 1, 2] and m[1].argmax(0)[:4].tolist() == [0, 0, 1, 1]


def test_turns_ids_and_scores():
  import rlx.data  # noqa: F401  (registers arith/correct)
  rnd = _round(["x\nAnswer: 3\n", "Answer: 4"], c=13,
               columns={"answer": [3, 3]})
  ids = _run("turn_ids_NT", {"name": "turn_ids", "delimiter": "\n", "max_turns": 2}, rnd)
  assert ids[0].tolist() == [0, 0] + [1] * 10 + [-1]   # 12 tokens; padding -1
  assert ids[1].tolist() == [0] * 9 + [-1] * 4
  ids = _run("turn_ids_NT", {"name": "turn_ids", "delimiter": "\n", "max_turns": 1}, rnd)
  assert ids[0].tolist() == [0, 0] + [-1] * 11         # turns past max_turns: -1
  s = _run("turn_scores_NU", {"name": "turn_scores", "delimiter": "\n", "max_turns": 3,
                              "reward": "arith/correct"}, rnd)
  np.testing.assert_array_equal(s, [[0, 1, np.nan], [0, np.nan, np.nan]])  # 4 != 3


def test_agent_parser():
  rnd = _round(["planner: go", "solver: x", "neither"])
  a = _run("agent_ids_N", {"name": "agent_parser", "patterns": ["^planner:", "^solver:"],
                           "default": 1}, rnd)
  assert a.tolist() == [0, 1, 1] and a.dtype == np.int32


def test_pairwise_from_a_function_and_from_a_reward():
  rnd = _round(["aa", "a", "bbb", "ccc"], rewards=[[1.0], [0.0], [np.nan], [2.0]])
  o = _run("pairwise_NM", {"name": "pairwise", "fn": "shorter"}, rnd)
  np.testing.assert_array_equal(o, [[np.nan, 0], [1, np.nan], [np.nan, 0.5], [0.5, np.nan]])
  o = _run("pairwise_NM", {"name": "pairwise", "reward": "r0"}, rnd)
  np.testing.assert_array_equal(o, [[np.nan, 1], [0, np.nan], [np.nan, np.nan],
                                    [np.nan, np.nan]])
  # Pref-GRPO on these outcomes: the win rates 1, 0 of group 0.
  from rlx.advantages import AdvantageInputs, compute_advantages
  x = AdvantageInputs.create(rnd.rewards_NK, [0, 0, 1, 1], pairwise_NM=o)
  adv, m = compute_advantages("pref_grpo", x, 2)
  assert adv[0] > 0 > adv[1] and float(m["estimator/win_rate_mean"]) == 0.5


def test_reference_samples_give_each_row_its_prompt_rewards():
  calls = []

  def sample_reference(m):
    calls.append(m)
    return np.arange(2 * m * 2, dtype=np.float32).reshape(2 * m, 2)  # [G * M, K]

  rnd = _round(["a", "b", "c", "d"], rewards=np.zeros((4, 2)), sample_reference=sample_reference)
  ref = _run("reference_rewards_GMK", {"name": "reference_samples", "samples": 3}, rnd)
  assert calls == [3] and ref.shape == (4, 3, 2)
  np.testing.assert_array_equal(ref[0], ref[1])
  np.testing.assert_array_equal(ref[2], np.arange(6, 12).reshape(3, 2))
  with pytest.raises(ValueError, match="reference policy"):
    _run("reference_rewards_GMK", {"name": "reference_samples", "samples": 3},
         _round(["a", "b"], rewards=np.zeros((2, 2))))


@pytest.mark.parametrize("spec, needle", [
    ({"name": "phase_splitter"}, "Valid"),
    ({"name": "phase_split"}, "missing required option 'delimiters'"),
    ({"name": "turn_ids", "delimiter": "\n", "max_turn": 2}, "max_turn"),
    ({"name": "turn_scores", "delimiter": "\n", "max_turns": 2, "reward": "nope"}, "Valid"),
    ({"name": "pairwise", "fn": "longer"}, "shorter"),
    ("phase_split", "Valid names")])
def test_bad_producer_specs_name_the_key(spec, needle):
  with pytest.raises((KeyError, TypeError, ValueError)) as e:
    structured.check_inputs({"phase_mask_NZT": spec})
  assert "config.advantage.inputs.phase_mask_NZT" in str(e.value) and needle in str(e.value)
