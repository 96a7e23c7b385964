"""Reward models as reward functions, ensembles, and the Pref-GRPO pairwise judge."""
import functools
import math

import hypothesis
import hypothesis.strategies as st
from hyp import examples
import numpy as np
import pytest

from rlx import testing
from rlx.advantages import AdvantageInputs, compute_advantages
from rlx.rewards import reward_models as rms
from rlx.rewards.registry import REWARD_FNS
from rlx.train.scoring import build_rewards

torch = pytest.importorskip("torch")

PROMPTS = ["Hi there", "What is 2+2?", "x", "Tell me a story about a cat", "ok"]
COMPS = ["hello!", "4", "a much longer completion to exercise a second length bucket", "",
         "fine"]


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
  root = tmp_path_factory.mktemp("rms")
  return {
      "a": testing.make_tiny_checkpoint(root / "a", "qwen2", seq_cls=True, seed=0),
      "b": testing.make_tiny_checkpoint(root / "b", "qwen2", seq_cls=True, seed=1),
      "multi": testing.make_tiny_checkpoint(root / "m", "llama", seq_cls=True, num_labels=3,
                                            seed=2, tied=False),
  }


@functools.lru_cache(maxsize=None)
def _torch_model(path):
  return testing.load_torch_model(path)


def _torch_scores(path, seqs):
  """transformers scores [N, L], one unpadded row at a time (no padding at all)."""
  model = _torch_model(path)
  rows = []
  for s in seqs:
    tokens = np.asarray([s], np.int64)
    rows.append(testing.torch_logits(model, tokens, np.ones_like(tokens))[0])
  return np.stack(rows)


def test_reward_fn_matches_transformers(ckpts):
  model = rms.get_reward_model(ckpts["a"])
  seqs = model.encode(PROMPTS, COMPS)
  tok = model.tokenizer
  # 'concat': prompt ids (+ specials) + completion ids + <eos>.
  want_ids = [tok(p)["input_ids"] + tok(c, add_special_tokens=False)["input_ids"] + [2]
              for p, c in zip(PROMPTS, COMPS)]
  assert seqs == want_ids
  ref = _torch_scores(ckpts["a"], seqs)[:, 0]
  assert np.abs(ref).max() > 0.3
  fn = rms.make_reward_model_fn(ckpts["a"], batch_size=2, max_len=64)
  got = np.asarray(fn(PROMPTS, COMPS, answer=["unused"] * 5))
  np.testing.assert_allclose(got, ref, atol=1e-4)
  # Left padding and another chunking give the same scores.
  left = rms.reward_model(PROMPTS, COMPS, checkpoint=ckpts["a"], batch_size=8,
                          padding_side="left", max_len=64)
  np.testing.assert_allclose(left, ref, atol=1e-4)


def test_pad_equal_to_eos_scores_like_transformers(tmp_path):
  # pad == eos (2): transformers scores the last non-pad token, i.e. before <eos>.
  d = testing.make_tiny_checkpoint(tmp_path, "qwen3", seq_cls=True, seed=3, pad_token_id=2)
  model = rms.RewardModel.load(d)
  seqs = model.encode(PROMPTS[:3], COMPS[:3])
  assert all(s[-1] == 2 for s in seqs) and model.pad_id == 2
  ref = _torch_scores(d, seqs)[:, 0]
  np.testing.assert_allclose(model.score_ids(seqs)[:, 0], ref, atol=1e-4)
  np.testing.assert_allclose(model.score_ids([s[:-1] for s in seqs])[:, 0], ref, atol=1e-4)


def test_registered_reward_model_via_config_kwargs(ckpts):
  specs = build_rewards({"rm": {"fn": "reward_model", "weight": 1.0,
                                "kwargs": {"checkpoint": ckpts["a"], "batch_size": 4}}})
  got = specs[0].fn(PROMPTS[:3], COMPS[:3])
  want = rms.make_reward_model_fn(ckpts["a"])(PROMPTS[:3], COMPS[:3])
  np.testing.assert_allclose(got, want, atol=1e-5)
  assert REWARD_FNS.get("reward_model") is rms.reward_model
  # Cached: loaded once per path.
  assert rms.get_reward_model(ckpts["a"]) is rms.get_reward_model(ckpts["a"] + "/")


def test_multi_head_and_weights(ckpts):
  model = rms.get_reward_model(ckpts["multi"])
  seqs = model.encode(PROMPTS, COMPS)
  ref = _torch_scores(ckpts["multi"], seqs)
  assert ref.shape == (5, 3)
  for head in (0, 2):
    got = rms.reward_model(PROMPTS, COMPS, checkpoint=ckpts["multi"], head=head)
    np.testing.assert_allclose(got, ref[:, head], atol=1e-4)
  w = [0.5, -1.0, 2.0]
  got = rms.reward_model(PROMPTS, COMPS, checkpoint=ckpts["multi"], head=w)
  np.testing.assert_allclose(got, ref @ np.asarray(w), atol=1e-4)
  with pytest.raises(ValueError, match="head=3 out of range .* 3 label"):
    rms.reward_model(PROMPTS, COMPS, checkpoint=ckpts["multi"], head=3)
  with pytest.raises(ValueError, match="head weights have shape \\[2\\]"):
    rms.reward_model(PROMPTS, COMPS, checkpoint=ckpts["multi"], head=[1.0, 2.0])


def test_templates_and_truncation(ckpts):
  model = rms.get_reward_model(ckpts["a"])
  tok = model.tokenizer
  fmt = model.encode(["P"], ["C"], template="Q: {prompt} A: {completion}")
  assert fmt == [tok("Q: P A: C")["input_ids"] + [tok.eos_token_id]]
  chat = model.encode(["P"], ["C"], template="chat")
  text = tok.apply_chat_template([{"role": "user", "content": "P"},
                                  {"role": "assistant", "content": "C"}], tokenize=False)
  assert chat == [tok(text, add_special_tokens=False)["input_ids"]]
  # A row longer than max_len keeps its last max_len tokens.
  long_ids = model.encode(["p" * 40], ["end"])[0]
  got = model.score_ids([long_ids], max_len=16, batch_size=1)
  want = model.score_ids([long_ids[-16:]], max_len=16, batch_size=1)
  np.testing.assert_allclose(got, want, atol=1e-6)
  with pytest.raises(ValueError, match="Unknown reward-model template 'jinja'. Valid choices: "
                     "concat, chat"):
    rms.make_reward_model_fn(ckpts["a"], template="jinja")
  with pytest.raises(ValueError, match="needs `checkpoint`"):
    rms.reward_model(["p"], ["c"], checkpoint="")


def test_ensemble_aggregate_hand_computed():
  from rlx.ensemble import ensemble_aggregate
  s_MN = np.array([[1.0, 2.0, 3.0], [3.0, 2.0, 1.0], [2.0, 5.0, -1.0]], np.float32)
  agg = lambda s, *a, **k: np.asarray(ensemble_aggregate(np.asarray(s, np.float32).T, *a, **k))
  np.testing.assert_allclose(agg(s_MN, "mean"), [2.0, 3.0, 1.0])
  np.testing.assert_allclose(agg(s_MN, "median"), [2.0, 2.0, 1.0])
  np.testing.assert_allclose(agg(s_MN, "min"), [1.0, 2.0, -1.0])
  # population std: sqrt(2/3), sqrt(2), sqrt(8/3)
  want = [2.0 - 0.5 * math.sqrt(2 / 3), 3.0 - 0.5 * math.sqrt(2.0), 1.0 - 0.5 * math.sqrt(8 / 3)]
  np.testing.assert_allclose(agg(s_MN, "mean_minus_std", lam=0.5), want, rtol=1e-6)
  # A missing score is ignored; a completion no model scored stays missing.
  np.testing.assert_allclose(agg([[1.0, np.nan], [2.0, 3.0]], "min"), [1.0, 3.0])
  assert np.isnan(agg([[np.nan], [np.nan]], "mean")[0])
  with pytest.raises(ValueError, match="option method='max' is not one of 'mean'"):
    agg(s_MN, "max")


def test_ensemble_fn_of_two_models(ckpts):
  a = np.asarray(rms.make_reward_model_fn(ckpts["a"])(PROMPTS, COMPS))
  b = np.asarray(rms.make_reward_model_fn(ckpts["b"])(PROMPTS, COMPS))
  assert np.abs(a - b).max() > 0.1  # different models
  # Two models: median = mean, population std = |a - b| / 2.
  for agg, want in (("mean", (a + b) / 2), ("min", np.minimum(a, b)), ("median", (a + b) / 2),
                    ("mean_minus_std", (a + b) / 2 - 2.0 * np.abs(a - b) / 2)):
    got = rms.make_ensemble_fn([ckpts["a"], ckpts["b"]], agg, lam=2.0)(PROMPTS, COMPS)
    np.testing.assert_allclose(got, want, atol=1e-5, err_msg=agg)
  spec = build_rewards({"e": {"fn": "reward_model_ensemble", "kwargs": {
      "checkpoints": [ckpts["a"], ckpts["b"]], "aggregation": "min"}}})[0]
  np.testing.assert_allclose(spec.fn(PROMPTS, COMPS), np.minimum(a, b), atol=1e-5)


# ------------------------------------------------------------------ judge

def test_outcome_matrix_hand_computed():
  p = np.array([[0.5, 0.9, 0.52, 0.3],
                [0.1, 0.5, 0.3, 0.55],
                [0.48, 0.7, 0.5, 0.5],
                [0.7, 0.45, 0.5, 0.5]])
  nan = np.nan
  want = np.array([[nan, 1.0, 0.5, 0.0],
                   [0.0, nan, 0.0, 1.0],
                   [0.5, 1.0, nan, 0.5],
                   [1.0, 0.0, 0.5, nan]])
  np.testing.assert_array_equal(rms.outcome_matrix(p, tie_margin=0.05), want)
  # Without a tie margin only p == 0.5 exactly is a tie.
  want0 = want.copy()
  want0[0, 2], want0[2, 0] = 1.0, 0.0
  np.testing.assert_array_equal(rms.outcome_matrix(p, tie_margin=0.0), want0)
  # Win rates (diagonal excluded): row 0 = (1 + 1 + 0) / 3 with tie_margin 0.
  np.testing.assert_allclose(rms.win_rates(want0), [2 / 3, 1 / 3, 1 / 2, 1 / 2])


@hypothesis.settings(max_examples=examples(60))
@hypothesis.given(st.integers(2, 7), st.floats(0.0, 0.5), st.integers(0, 2**31 - 1))
@hypothesis.example(7, 0.5, 515015)   # found by the stress profile: |p - 0.5| = 0.5 in float32 only
def test_outcome_matrix_antisymmetric(g, margin, seed):
  rng = np.random.default_rng(seed)
  r = rng.normal(size=g) * rng.choice([0.0, 0.05, 3.0])
  for p in (rms.bt_probabilities(r, temperature=0.7), rng.uniform(size=(g, g))):
    o = rms.outcome_matrix(p, margin)
    off = ~np.eye(g, dtype=bool)
    assert np.isnan(np.diag(o)).all()
    np.testing.assert_array_equal((o + o.T)[off], 1.0)
    assert set(np.unique(o[off])) <= {0.0, 0.5, 1.0}
    iu = np.triu_indices(g, 1)
    d = np.asarray(p, np.float64)[iu] - 0.5    # outcome_matrix compares in float64
    want = np.where((np.abs(d) < margin) | (d == 0), 0.5, (d > 0).astype(float))
    np.testing.assert_array_equal(o[iu], want)


def test_judge_reward_mode_and_pref_grpo_layout(ckpts):
  judge = rms.make_judge(ckpts["a"], mode="reward", tie_margin=0.0)
  comps = COMPS[:4]
  r = np.asarray(rms.make_reward_model_fn(ckpts["a"])(["Q"] * 4, comps))
  np.testing.assert_allclose(judge.probabilities("Q", comps),
                             1 / (1 + np.exp(-(r[:, None] - r[None, :]))), atol=1e-5)
  o = rms.judge_group(judge, "Q", comps)
  rank = np.argsort(np.argsort(r))  # 0 = lowest reward
  np.testing.assert_allclose(rms.win_rates(o), rank / 3, rtol=1e-6)
  # Two groups of 4 -> pairwise_NM [8, 4] for pref_grpo.
  prompts = ["Q"] * 4 + ["R"] * 4
  pair = judge.judge_batch(prompts, comps + COMPS[1:5], group_size=4)
  assert pair.shape == (8, 4)
  np.testing.assert_array_equal(pair[:4], o)
  np.testing.assert_array_equal(pair[4:], judge.judge_group("R", COMPS[1:5]))
  inputs = AdvantageInputs.create(np.zeros((8, 1)), np.repeat([0, 1], 4), pairwise_NM=pair)
  adv, _ = compute_advantages("pref_grpo", inputs, num_groups=2)
  wr = rms.win_rates(pair[:4])
  np.testing.assert_allclose(adv[:4], (wr - wr.mean()) / (wr.std(ddof=1) + 1e-8), atol=1e-5)
  # Interleaved group ids give the same outcomes per group.
  gids = np.array([0, 1] * 4)
  inter = judge.judge_batch(["Q", "R"] * 4, [c for pair_ in zip(comps, COMPS[1:5])
                                             for c in pair_], group_ids_N=gids)
  np.testing.assert_array_equal(inter[gids == 0], o)


def test_judge_pair_mode(ckpts):
  model = rms.get_reward_model(ckpts["a"])
  tmpl = "{prompt}|{a}|{b}"
  comps = ["yes", "no", "maybe"]
  judge = rms.PairwiseJudge(model, mode="pair", pair_template=tmpl, tie_margin=0.02)
  tok = model.tokenizer

  def q(a, b):  # P(a beats b) read by transformers from the pair text
    ids = tok(f"Q|{a}|{b}")["input_ids"] + [tok.eos_token_id]
    s = _torch_scores(ckpts["a"], [ids])[0, 0]
    return 1 / (1 + math.exp(-s))

  want = np.full((3, 3), 0.5)
  for i in range(3):
    for j in range(3):
      if i != j:
        want[i, j] = 0.5 * (q(comps[i], comps[j]) + 1 - q(comps[j], comps[i]))
  p = judge.probabilities("Q", comps)
  np.testing.assert_allclose(p, want, atol=1e-5)
  np.testing.assert_array_equal(judge.judge_group("Q", comps), rms.outcome_matrix(want, 0.02))
  one = rms.PairwiseJudge(model, mode="pair", pair_template=tmpl, both_orders=False)
  p1 = one.probabilities("Q", comps)
  assert p1[0, 1] == pytest.approx(q("yes", "no"), abs=1e-5)
  assert p1[1, 0] == pytest.approx(1 - q("yes", "no"), abs=1e-5)


def test_judge_pair_mode_three_labels(ckpts):
  model = rms.get_reward_model(ckpts["multi"])
  judge = rms.PairwiseJudge(model, mode="pair", pair_template="{prompt}:{a}/{b}",
                            both_orders=False)
  s = model.score_ids([model.tokenizer("Q:u/v")["input_ids"] + [2]])[0].astype(np.float64)
  e = np.exp(s - s.max())
  p = e / e.sum()
  assert judge.probabilities("Q", ["u", "v"])[0, 1] == pytest.approx(p[2] + p[1] / 2, abs=1e-5)


def test_judge_errors(ckpts):
  with pytest.raises(ValueError, match="option mode='vote' is not one of 'reward', 'pair'"):
    rms.make_judge(ckpts["a"], mode="vote")
  with pytest.raises(ValueError, match="tie_margin must be in"):
    rms.make_judge(ckpts["a"], tie_margin=0.7)
  with pytest.raises(ValueError, match="pair_template needs"):
    rms.make_judge(ckpts["a"], mode="pair", pair_template="{prompt} {a}")
  judge = rms.make_judge(ckpts["a"])
  with pytest.raises(ValueError, match="group_size dividing the 3"):
    judge.judge_batch(["p"] * 3, ["a", "b", "c"], group_size=2)


def test_judge_producer_gives_the_judges_pairwise_inputs(ckpts):
  """config.advantage.inputs.pairwise_NM = {'name': 'judge', ...} (rlx/train/structured.py)."""
  from rlx.train import structured
  comps = COMPS[:4]
  rnd = structured.Round(
      prompts=["Q"] * 2 + ["R"] * 2, completions=comps, completion_ids=[[1]] * 4, columns={},
      rewards_NK=np.zeros((4, 1), np.float32), reward_names=("r",),
      sizes=structured.Sizes(n=4, r=2, c=4, k=1), tokenizer=None, step=0)
  inputs = structured.check_inputs({"pairwise_NM": {
      "name": "judge", "checkpoint": str(ckpts["a"]), "options": {"mode": "reward"}}})
  out = structured.produce(inputs, rnd)["pairwise_NM"]
  judge = rms.make_judge(ckpts["a"], mode="reward")
  np.testing.assert_array_equal(out, judge.judge_batch(rnd.prompts, comps, group_size=2))
  assert out.shape == (4, 2) and np.isnan(out[[0, 1], [0, 1]]).all()
