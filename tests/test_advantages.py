"""Worked examples of every advantage estimator, the registry/options API and
section-7 diagnostics. Numbers are computed by hand in each test."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlx.advantages import (ESTIMATORS, AdvantageInputs, ReferenceStats, compute_advantages,
                            estimator_options, fit_reference_stats)
from rlx.advantages.registry import check_options

SQ2 = math.sqrt(2.0)


def adv(name, rewards, groups, num_groups, **kw):
  inputs_kw = {k: kw.pop(k) for k in list(kw) if k in (
      "valid_N", "weights_K", "lengths_N", "task_ids_N", "agent_ids_N", "phase_mask_NZT",
      "turn_scores_NU", "turn_ids_NT", "pairwise_NM", "reward_names")}
  kw.setdefault("diagnostics", False)
  inputs = AdvantageInputs.create(np.asarray(rewards, np.float32), groups, **inputs_kw)
  a, metrics = jax.jit(lambda i: compute_advantages(name, i, num_groups, **kw))(inputs)
  return np.asarray(a), metrics


def test_grpo_one_group():
  a, _ = adv("grpo", [[0.], [1.], [1.], [0.]], [0, 0, 0, 0], 1)
  std = math.sqrt(1 / 3)  # sample std of (0, 1, 1, 0)
  np.testing.assert_allclose(a, np.array([-.5, .5, .5, -.5]) / (std + 1e-4), rtol=1e-6)


def test_grpo_sums_weighted_rewards_and_ignores_missing():
  # s = 1*r0 + 2*r1, NaN counts as absent (TRL nansum): s = (2, 1, 3, 0).
  r = [[0, 1], [1, np.nan], [1, 1], [0, 0]]
  a, _ = adv("grpo", r, [0] * 4, 1, weights_K=[1., 2.], eps=0.0)
  s = np.array([2., 1., 3., 0.])
  np.testing.assert_allclose(a, (s - s.mean()) / s.std(ddof=1), rtol=1e-6)
  # drop_row: row 1 left out of the statistics and gets 0.
  a, _ = adv("grpo", r, [0] * 4, 1, weights_K=[1., 2.], eps=0.0, missing="drop_row")
  s3 = np.array([2., 3., 0.])
  expect = (s3 - s3.mean()) / s3.std(ddof=1)
  np.testing.assert_allclose(a, [expect[0], 0, expect[1], expect[2]], rtol=1e-6)


def test_dr_grpo_rloo_reinforce():
  r = [[1.], [0.], [0.], [0.], [1.], [1.], [0.], [0.]]
  g = [0, 0, 0, 0, 1, 1, 1, 1]
  a, _ = adv("dr_grpo", r, g, 2)
  np.testing.assert_allclose(a, [.75, -.25, -.25, -.25, .5, .5, -.5, -.5], atol=1e-7)
  a, _ = adv("rloo", r, g, 2)
  np.testing.assert_allclose(a, [1, -1 / 3, -1 / 3, -1 / 3, 2 / 3, 2 / 3, -2 / 3, -2 / 3], atol=1e-6)
  a, _ = adv("reinforce_batch", r, g, 2)
  np.testing.assert_allclose(a, np.array(r)[:, 0] - 3 / 8, atol=1e-7)
  a, _ = adv("reinforce_batch", r, g, 2, scale_std=True, eps=0.0)
  x = np.array(r)[:, 0]
  np.testing.assert_allclose(a, (x - x.mean()) / x.std(ddof=1), rtol=1e-6)


def test_gdpo_paper_figure2_two_rollouts():
  # GDPO paper, two binary rewards, two rollouts. Totals (0, 1): rollouts (0,0), (0,1);
  # totals (0, 2): rollouts (0,0), (1,1). GRPO gives (-0.7071, 0.7071) for both;
  # GDPO's decoupled sum (before the batch step) gives (-0.7071, 0.7071) and
  # (-1.4142, 1.4142).
  r = [[0, 0], [0, 1], [0, 0], [1, 1]]
  g = [0, 0, 1, 1]
  grpo, _ = adv("grpo", r, g, 2, eps=0.0)
  np.testing.assert_allclose(grpo, [-1 / SQ2, 1 / SQ2, -1 / SQ2, 1 / SQ2], rtol=1e-6)
  mrn, _ = adv("mrn", r, g, 2, eps=0.0)
  np.testing.assert_allclose(mrn, [-1 / SQ2, 1 / SQ2, -SQ2, SQ2], rtol=1e-6)
  # With the batch step: (A - mean) / (std + 1e-4), mean 0, std of
  # (-.7071, .7071, -1.4142, 1.4142) with ddof 1 = sqrt(5/3).
  gdpo, m = adv("gdpo", r, g, 2, eps=0.0)
  pre = np.array([-1 / SQ2, 1 / SQ2, -SQ2, SQ2])
  np.testing.assert_allclose(gdpo, pre / (math.sqrt(5 / 3) + 1e-4), rtol=1e-6)
  np.testing.assert_allclose(float(m["estimator/batch_std"]), math.sqrt(5 / 3), rtol=1e-6)


def test_gdpo_token_batch_stats_and_missing_modes():
  # verl port: token-weighted whitening with Bessel correction over tokens.
  r = [[0, 0], [0, 1], [0, 0], [1, 1]]
  lengths = [1, 3, 2, 2]
  a, _ = adv("gdpo", r, [0, 0, 1, 1], 2, eps=0.0, batch_stats="token", lengths_N=lengths)
  pre = np.array([-1 / SQ2, 1 / SQ2, -SQ2, SQ2])
  w = np.array(lengths, float)
  mean = (w * pre).sum() / w.sum()
  var = (w * (pre - mean) ** 2).sum() / w.sum() * w.sum() / (w.sum() - 1)
  np.testing.assert_allclose(a, (pre - mean) / np.sqrt(var + 1e-8), rtol=1e-6)
  # Missing reward: leave_out masks it; zero_fill (TRL port) uses 0.
  r = [[1, np.nan], [0, 1], [1, 1]]
  lo, _ = adv("mrn", r, [0, 0, 0], 1, eps=0.0)
  zf, _ = adv("mrn", r, [0, 0, 0], 1, eps=0.0, missing="zero_fill")
  z0 = (np.array([1, 0, 1]) - 2 / 3) / np.std([1, 0, 1], ddof=1)
  z1_lo = np.zeros(3)                                # (1, 1) over rows 1, 2: constant
  z1_zf = (np.array([0, 1, 1]) - 2 / 3) / np.std([0, 1, 1], ddof=1)
  np.testing.assert_allclose(lo, z0 + z1_lo, rtol=1e-6)
  np.testing.assert_allclose(zf, z0 + z1_zf, rtol=1e-6)


def test_bnpo_beta_fit_worked_example():
  # Group means p = (0.25, 0.5, 0.75): mu = 0.5, var = 0.0625 (ddof 1), so
  # c = 0.25 / 0.0625 - 1 = 3 and a = b = 1 + 3 * 0.5 / 3 = 1.5.
  # Beta(1.5, 1.5) has B = pi / 8: f(p) = sqrt(p (1 - p)) * 8 / pi.
  r = [1, 0, 0, 0, 1, 1, 0, 0, 1, 1, 1, 0]
  g = np.repeat([0, 1, 2], 4)
  a, m = adv("bnpo", np.array(r, np.float32)[:, None], g, 3)
  np.testing.assert_allclose(float(m["estimator/alpha/r0"]), 1.5, rtol=1e-6)
  np.testing.assert_allclose(float(m["estimator/beta/r0"]), 1.5, rtol=1e-6)
  p = np.repeat([.25, .5, .75], 4)
  f = np.sqrt(p * (1 - p)) * 8 / math.pi
  np.testing.assert_allclose(a, (np.array(r) - p) / f, rtol=1e-5)
  # a = b = 3/2 is GRPO for binary rewards up to a constant: ratio pi / 8
  # against the population-std z-score.
  grpo, _ = adv("grpo", np.array(r, np.float32)[:, None], g, 3, eps=0.0, ddof=0)
  np.testing.assert_allclose(a / grpo, math.pi / 8, rtol=1e-5)


def test_bnpo_fixed_ab_and_decomposition():
  r = np.array([[1, .5], [0, .25], [1, 1], [1, 0]], np.float32)
  g = [0, 0, 1, 1]
  a, _ = adv("bnpo", r, g, 2, fixed_ab=(1.0, 1.0))
  dev = r - np.repeat(r.reshape(2, 2, 2).mean(1), 2, axis=0)
  np.testing.assert_allclose(a, dev.mean(1), rtol=1e-6, atol=1e-7)
  # Range mapping: rewards in [-1, 3] map to (r + 1) / 4.
  a2, _ = adv("bnpo", 4 * r - 1, g, 2, fixed_ab=(1.0, 1.0), reward_min=-1.0, reward_max=3.0)
  np.testing.assert_allclose(a2, a, rtol=1e-6, atol=1e-7)


def test_tmn_reweight_worked_example():
  # One task, groups (1,0,0,0): mu .25, var .25 and (1,1,0,0): mu .5, var 1/3.
  # S = sqrt((1/4 + 1/3) / 2) = sqrt(7/24).
  r = np.array([1, 0, 0, 0, 1, 1, 0, 0], np.float32)[:, None]
  g = [0, 0, 0, 0, 1, 1, 1, 1]
  mu = np.repeat([.25, .5], 4)
  s_scale = math.sqrt(7 / 24)
  a, _ = adv("tmn_reweight", r, g, 2, reweight=False)
  np.testing.assert_allclose(a, (r[:, 0] - mu) / (s_scale + 1e-6), rtol=1e-6)
  # Reweighting (alpha .5, gamma 1): mbar = .375; thresholds .3125 and .4375;
  # pass rates 1/4 and 1/2; group 0 positives x e^(1/4), negatives x e^(-1/4);
  # group 1 weights 1.
  a, m = adv("tmn_reweight", r, g, 2)
  w = np.array([math.exp(.25)] + [math.exp(-.25)] * 3 + [1.] * 4)
  np.testing.assert_allclose(a, w * (r[:, 0] - mu) / (s_scale + 1e-6), rtol=1e-6)
  np.testing.assert_allclose(float(m["estimator/mean_pass_rate"]), .375, rtol=1e-6)


def test_tmn_tasks_and_singletons():
  # Task 0: group (2, 0); task 1: group (1, 3) and a singleton (5): var 1 there,
  # mean 0 for the singleton (GoLongRL's G=1 rule).
  r = np.array([2, 0, 1, 3, 5], np.float32)[:, None]
  g = [0, 0, 1, 1, 2]
  a, _ = adv("tmn_reweight", r, g, 3, task_ids_N=[0, 0, 1, 1, 1], num_tasks=2, reweight=False)
  s0 = math.sqrt(2.0)                     # var of (2, 0) = 2
  s1 = math.sqrt((2.0 + 1.0) / 2)         # mean of var(1, 3) = 2 and 1
  np.testing.assert_allclose(a, [1 / (s0 + 1e-6), -1 / (s0 + 1e-6), -1 / (s1 + 1e-6),
                                 1 / (s1 + 1e-6), 5 / (s1 + 1e-6)], rtol=1e-6)


def test_agent_grouping():
  # One prompt, agents 0 and 1: GRPO inside (prompt, agent).
  r = np.array([1, 0, 5, 3, 0, 4], np.float32)[:, None]
  agents = [0, 0, 1, 1, 0, 1]
  a, _ = adv("grpo", r, [0] * 6, 1, agent_ids_N=agents, group_by_agent=True, num_agents=2,
             eps=0.0)
  za = (np.array([1, 0, 0]) - 1 / 3) / np.std([1, 0, 0], ddof=1)
  zb = (np.array([5, 3, 4]) - 4) / np.std([5, 3, 4], ddof=1)
  np.testing.assert_allclose(a, [za[0], za[1], zb[0], zb[1], za[2], zb[2]], rtol=1e-6)
  b, _ = adv("agent_grouping", r, [0] * 6, 1, agent_ids_N=agents, num_agents=2,
             base_options={"eps": 0.0})
  np.testing.assert_allclose(b, a, rtol=1e-6)


def test_pref_grpo_worked_example():
  # Member 0 beats 1 and 2; 1 and 2 tie: WR = (1, .25, .25); A = z-score (ddof 1).
  pair = [[1, 1], [0, .5], [0, .5]]
  a, _ = adv("pref_grpo", np.zeros((3, 1)), [0, 0, 0], 1, pairwise_NM=pair)
  wr = np.array([1, .25, .25])
  np.testing.assert_allclose(a, (wr - wr.mean()) / (wr.std(ddof=1) + 1e-8), rtol=1e-6)


def test_f_grpo_phase_tokens():
  # Phase rewards (candidate generation, ranking), two rollouts, 4 tokens:
  # tokens 0-1 belong to phase 0, tokens 2-3 to phase 1.
  r = [[1, 0], [0, 1]]
  mask = np.zeros((2, 2, 4), bool)
  mask[:, 0, :2] = True
  mask[:, 1, 2:] = True
  a, _ = adv("f_grpo", r, [0, 0], 1, phase_mask_NZT=mask, eps=0.0)
  z = 1 / SQ2
  np.testing.assert_allclose(a, [[z, z, -z, -z], [-z, -z, z, z]], rtol=1e-6)


def test_mapo_turn_returns():
  # s = [[1, 0], [0, 1]], gamma 1: R = [[1, 0], [1, 1]]. Turn 0: (1, 1) -> 0;
  # turn 1: (0, 1) -> (-.7071, .7071). Batch: (1, 0, 1, 1), mean .75, std .5.
  a, _ = adv("mapo", np.zeros((2, 1)), [0, 0], 1, turn_scores_NU=[[1, 0], [0, 1]], eps=0.0)
  zb = np.array([[.5, -1.5], [.5, .5]])
  zt = np.array([[0, -1 / SQ2], [0, 1 / SQ2]])
  np.testing.assert_allclose(a, .5 * zt + .5 * zb, rtol=1e-6, atol=1e-7)
  # Discount and token mapping: gamma .5, turn 1 missing for row 1.
  scores = [[1, 2], [4, np.nan]]
  tid = [[0, 0, 1, -1], [0, -1, -1, -1]]
  a, _ = adv("mapo", np.zeros((2, 1)), [0, 0], 1, turn_scores_NU=scores, turn_ids_NT=tid,
             gamma=.5, lam=0.0, eps=0.0)
  ret = np.array([2.0, 2.0, 4.0])      # R[0,0] = 1 + .5 * 2, R[0,1] = 2, R[1,0] = 4
  zb = (ret - ret.mean()) / ret.std(ddof=1)
  np.testing.assert_allclose(a, [[zb[0], zb[0], zb[1], 0], [zb[2], 0, 0, 0]], rtol=1e-6)


def test_reference_frozen_fit_checkpoint_and_reuse():
  ref = np.array([[0, 10], [1, 20], [0, 30], [1, np.nan]], np.float32)
  stats = fit_reference_stats(ref)
  np.testing.assert_allclose(stats.mean_K, [.5, 20], rtol=1e-6)
  np.testing.assert_allclose(stats.std_K, [math.sqrt(1 / 3), 10], rtol=1e-6)
  restored = ReferenceStats.from_dict(stats.to_dict())   # what a checkpoint stores
  r = np.array([[1, 40], [0, np.nan]], np.float32)
  inputs = AdvantageInputs.create(r, [0, 0])
  fn = jax.jit(lambda i, s: compute_advantages("reference_frozen", i, 1, stats=s)[0])
  a = np.asarray(fn(inputs, restored))
  z0 = (np.array([1, 0]) - .5) / (math.sqrt(1 / 3) + 1e-6)
  np.testing.assert_allclose(a, [z0[0] + 20 / (10 + 1e-6), z0[1]], rtol=1e-6)
  with pytest.raises(ValueError, match="stats"):
    compute_advantages("reference_frozen", inputs, 1)


def test_lightningrl():
  # Group 0: acc (1, 0), speed (.2, .6): population z's (1, -1) and (-1, 1);
  # group 1: acc (1, 1) -> 0, speed (.1, .3) -> (-1, 1). Then batch z (ddof 0).
  r = [[1, .2], [0, .6], [1, .1], [1, .3]]
  a, _ = adv("lightningrl", r, [0, 0, 1, 1], 2)
  pre = np.array([0., 0., -1., 1.])
  np.testing.assert_allclose(a, (pre - pre.mean()) / pre.std(), rtol=1e-6, atol=1e-7)


def test_per_reward_normalizers():
  r = np.array([[1, 3, 2], [0, 1, 5], [0, 1, 7], [1, 2, 1]], np.float32)
  g = [0, 0, 0, 0]
  a, m = adv("per_reward", r, g, 1, normalizers={"r0": "group_z", "r1": "rank", "r2": "none"},
             eps=0.0)
  z0 = (r[:, 0] - .5) / np.std(r[:, 0], ddof=1)
  # Mid-rank quantiles of (3, 1, 1, 2): below + .5 ties over n - 1 = 3, mapped to [-1, 1].
  q = np.array([3, .5, .5, 2]) / 3
  np.testing.assert_allclose(a, z0 + (2 * q - 1) + r[:, 2], rtol=1e-6)
  a, _ = adv("per_reward", r, g, 1, normalizers=["loo", "batch_z", "group_center"], eps=0.0)
  loo = (r[:, 0] - (r[:, 0].sum() - r[:, 0]) / 3)
  bz = (r[:, 1] - r[:, 1].mean()) / r[:, 1].std(ddof=1)
  gc = r[:, 2] - r[:, 2].mean()
  np.testing.assert_allclose(a, loo + bz + gc, rtol=1e-6)


def test_registry_and_option_errors():
  inputs = AdvantageInputs.create(np.zeros((2, 1), np.float32), [0, 0])
  with pytest.raises(KeyError, match="Did you mean 'gdpo'"):
    compute_advantages("gdp", inputs, 1)
  with pytest.raises(TypeError, match=r"advantage estimator 'gdpo': unknown option "
                     r"'epsilon'.*eps=0.0001"):
    compute_advantages("gdpo", inputs, 1, epsilon=1e-3)
  with pytest.raises(ValueError, match="missing='nan'.*'leave_out'"):
    compute_advantages("gdpo", inputs, 1, missing="nan")
  with pytest.raises(TypeError, match="option eps='abc' must be a number"):
    check_options(ESTIMATORS, "gdpo", {"eps": "abc"})
  with pytest.raises(TypeError, match="option batch_norm='no' must be True or False"):
    check_options(ESTIMATORS, "gdpo", {"batch_norm": "no"})
  with pytest.raises(TypeError, match="static Python int"):
    compute_advantages("grpo", inputs, jnp.int32(1))
  with pytest.raises(ValueError, match="pairwise_NM"):
    compute_advantages("pref_grpo", inputs, 1)
  assert set(estimator_options("gdpo")) == {"eps", "ddof", "missing", "batch_norm",
                                            "batch_stats", "batch_eps"}
  assert {"grpo", "dr_grpo", "rloo", "reinforce_batch", "gdpo", "mrn", "bnpo", "tmn_reweight",
          "agent_grouping", "pref_grpo", "f_grpo", "mapo", "reference_frozen", "lightningrl",
          "per_reward"} <= set(ESTIMATORS.names())


def test_diagnostics_section7():
  # Two groups of two, rewards (acc, fmt) with fmt = 2 * acc + 1 in group 0 and constant in
  # group 1: correlation 1 over rows where both are present.
  r = np.array([[0, 1], [1, 3], [1, 5], [0, 5]], np.float32)
  a, m = adv("mrn", r, [0, 0, 1, 1], 2, eps=0.0, reward_names=("acc", "fmt"),
             diagnostics=True)
  assert "reward/acc/mean" not in m  # batch moments: the trainer's, on the host
  np.testing.assert_allclose(float(m["reward/acc/constant_group_frac"]), 0.)
  np.testing.assert_allclose(float(m["reward/fmt/constant_group_frac"]), .5)
  corr = np.corrcoef(r.T)[0, 1]
  np.testing.assert_allclose(float(m["reward_corr/acc/fmt"]), corr, rtol=1e-5)
  # A = (-1.414, 1.414, .707, -.707): acc contributes .707 * 4, fmt .707 * 2.
  np.testing.assert_allclose(float(m["reward/acc/abs_adv_share"]), 2 / 3, rtol=1e-5)
  np.testing.assert_allclose(float(m["reward/fmt/abs_adv_share"]), 1 / 3, rtol=1e-5)
  assert float(m["adv/distinct_per_group"]) == 2.0
  assert int(m["adv/distinct_group_vectors"]) == 2
  # Resolution on the GDPO example: GRPO 1 distinct vector for groups (0,1)/(0,2); GDPO 2.
  r2 = [[0, 0], [0, 1], [0, 0], [1, 1]]
  _, mg = adv("grpo", r2, [0, 0, 1, 1], 2, eps=0.0, diagnostics=True)
  _, md = adv("mrn", r2, [0, 0, 1, 1], 2, eps=0.0, diagnostics=True)
  assert int(mg["adv/distinct_group_vectors"]) == 1
  assert int(md["adv/distinct_group_vectors"]) == 2


def test_diagnostics_sampled_groups_match_full_batch_counts():
  # With a row budget smaller than N, resolution uses complete groups only.
  rng = np.random.default_rng(0)
  r = (rng.random((64, 1)) < .5).astype(np.float32)
  g = np.repeat(np.arange(16), 4)
  inputs = AdvantageInputs.create(r, g)
  _, full = jax.jit(lambda i: compute_advantages("grpo", i, 16))(inputs)
  _, part = jax.jit(lambda i: compute_advantages("grpo", i, 16, resolution_rows=32))(inputs)
  assert int(full["adv/resolution_groups"]) == 16
  assert 1 <= int(part["adv/resolution_groups"]) <= 8
  # Mean distinct values per group is 1 or 2 for binary rewards.
  assert 1.0 <= float(part["adv/distinct_per_group"]) <= 2.0


def test_runs_inside_jit_with_padding_rows():
  r = np.array([[1.], [0.], [7.], [1.]], np.float32)
  inputs = AdvantageInputs.create(r, [0, 0, 0, 1], valid_N=[True, True, False, True])

  @jax.jit
  def step(i):
    return compute_advantages("gdpo", i, 2)

  a, m = step(inputs)
  assert float(a[2]) == 0.0 and float(a[3]) == 0.0   # padding row; singleton group
  assert np.isfinite(np.asarray(a)).all()
  assert all(np.isfinite(np.asarray(v)).all() for v in m.values())
