"""GD²PO, DVAO and MO-GRPO against float64 numpy re-derivations of their formulas.

GD²PO follows Qwen-Applications/GD2PO tool-calling/verl/trainer/ppo/ray_trainer.py
(dict-of-groups GRPO per reward, token-level rollout advantages, masked
whitening over the kept tokens), with rlx's conventions where that code has
none: a missing reward is left out of its group's statistics, a row without
any reward is dropped, and a single-member group gives 0 (verl: mean 0, std 1).
"""
from collections import defaultdict

import jax
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from rlx.advantages import ESTIMATORS, AdvantageInputs, compute_advantages

TOL = dict(rtol=1e-6, atol=1e-6)


def run(name, inputs, num_groups, **options):
  fn = jax.jit(lambda i: compute_advantages(name, i, num_groups, diagnostics=False, **options)[0])
  return np.asarray(fn(inputs), np.float64)


def grpo_per_reward(scores, index, eps, singleton):
  """verl compute_grpo_outcome_advantage over the present (non-NaN) scores."""
  id2score = defaultdict(list)
  for i, s in enumerate(scores):
    if not np.isnan(s):
      id2score[index[i]].append(s)
  out = np.zeros(len(scores))
  for i, s in enumerate(scores):
    if np.isnan(s):
      continue
    vals = id2score[index[i]]
    if len(vals) == 1:
      out[i] = s / (1 + eps) if singleton == "verl" else 0.0
    else:
      out[i] = (s - np.mean(vals)) / (np.std(vals, ddof=1) + eps)
  return out


def masked_whiten(values, mask):
  mean = (values * mask).sum() / (mask.sum() + 1e-8)
  var = (((values - mean) ** 2) * mask).sum() / (mask.sum() + 1e-8)
  var = var * mask.sum() / (mask.sum() - 1)
  return (values - mean) / np.sqrt(var + 1e-8)


def gd2po_reference(r, groups, lengths, variant, threshold=0.2, whiten=True,
                    singleton="zero"):
  r = r.astype(np.float64)
  rows = ~np.isnan(r).all(1)
  response_mask = (np.arange(lengths.max())[None] < lengths[:, None]).astype(np.float64)
  token_adv = np.stack([grpo_per_reward(r[:, k], groups, 1e-6, singleton)[:, None]
                        * response_mask for k in range(r.shape[1])])
  rollout_adv = (token_adv * response_mask).sum(-1)                  # [K, N]
  conflict = (rollout_adv > 1e-8).any(0) & (rollout_adv < -1e-8).any(0)
  if variant == "snr":
    ratio = rollout_adv.sum(0) / (np.abs(rollout_adv).sum(0) + 1e-8)
    conflict = conflict & (np.abs(ratio) < threshold)
  keep = ~conflict & rows
  group_ratio = np.zeros(len(groups))
  for g in np.unique(groups):
    members = (groups == g) & rows
    group_ratio[members] = keep[members].sum() / members.sum() if members.any() else 0
  new = token_adv.sum(0) * group_ratio[:, None]
  filtered = new * keep[:, None] * response_mask
  if not whiten:
    return filtered[:, 0]
  wmask = keep[:, None] * response_mask
  return (masked_whiten(filtered, wmask) * wmask)[:, 0]     # every row has >= 1 token


def random_batch(rng, num_groups, min_size, max_size, k=3):
  sizes = rng.integers(min_size, max_size + 1, num_groups)
  groups = rng.permutation(np.repeat(np.arange(num_groups), sizes)).astype(np.int32)
  n = len(groups)
  cols = [rng.random(n) < .5, rng.normal(size=n) * 2, rng.integers(-2, 3, n)][:k]
  r = np.stack(cols, 1).astype(np.float32)
  lengths = rng.integers(1, 9, n)
  return r, groups, lengths


@pytest.mark.parametrize("seed,variant,threshold", [
    (0, "hard", .2), (1, "hard", .2), (2, "snr", .2), (3, "snr", .8), (4, "snr", .5)])
def test_gd2po_matches_official_code(seed, variant, threshold):
  rng = np.random.default_rng(seed)
  r, groups, lengths = random_batch(rng, 10, 2, 7)
  inputs = AdvantageInputs.create(r, groups, lengths_N=lengths)
  ours = run("gd2po", inputs, 10, variant=variant, threshold=threshold)
  ref = gd2po_reference(r, groups, lengths, variant, threshold)
  np.testing.assert_allclose(ours, ref, **TOL)
  # The filter is active here: some rows are dropped, some kept.
  assert 0 < (ref == 0).sum() < len(ref)


@pytest.mark.parametrize("variant", ["hard", "snr"])
def test_gd2po_degenerate_groups(variant):
  """Constant, single-member and all-missing groups, missing entries, no whitening."""
  rng = np.random.default_rng(9)
  r, groups, lengths = random_batch(rng, 12, 1, 6)
  assert (np.bincount(groups) == 1).any()
  r[groups == 0] = [1., .5, 2.]                   # every reward constant in group 0
  r[groups == 1, 1] = 3.                          # one reward constant in group 1
  r[groups == 2] = np.nan                         # group 2 has no reward at all
  r[rng.random(len(groups)) < .1, 2] = np.nan
  inputs = AdvantageInputs.create(r, groups, lengths_N=lengths)
  for whiten in (True, False):
    ours = run("gd2po", inputs, 12, variant=variant, threshold=.5, batch_norm=whiten)
    ref = gd2po_reference(r, groups, lengths, variant, .5, whiten=whiten)
    np.testing.assert_allclose(ours, ref, **TOL)
    assert (ours[groups == 2] == 0).all()
  # With groups of >= 2 members only, singleton handling does not matter.
  r2, g2, l2 = random_batch(rng, 6, 2, 5)
  ref_verl = gd2po_reference(r2, g2, l2, variant, .5, singleton="verl")
  ours = run("gd2po", AdvantageInputs.create(r2, g2, lengths_N=l2), 6, variant=variant,
             threshold=.5)
  np.testing.assert_allclose(ours, ref_verl, **TOL)


def test_gd2po_worked_example():
  """Two rewards in one group of four, r1 = (1, 1, 0, 0), r2 = (1, 0, 1, 0):
  rows 1 and 2 disagree in sign and are dropped (group keep ratio 1/2); the two
  kept rows have opposite pre-whitening advantages, so they whiten to +-1/sqrt(2)."""
  r = np.array([[1, 1], [1, 0], [0, 1], [0, 0]], np.float32)
  inputs = AdvantageInputs.create(r, np.zeros(4, np.int32), lengths_N=np.ones(4))
  fn = jax.jit(lambda i: compute_advantages("gd2po", i, 1, diagnostics=False))
  a, metrics = fn(inputs)
  c = 1 / np.sqrt(2 * (1 + 1e-8 / 2))   # var of (+-x) is 2x^2; rsqrt(var + 1e-8) * x
  np.testing.assert_allclose(np.asarray(a), [c, 0, 0, -c], rtol=1e-5)
  assert float(metrics["estimator/conflict_frac"]) == .5
  assert float(metrics["estimator/group_ratio_mean"]) == .5
  # SNR keeps a conflicting row whose advantages mostly agree: raise r2's spread.
  r = np.array([[1, 5], [1, 1], [0, 1], [0, 1]], np.float32)   # row 1: a = (.87, -.5)
  inputs = AdvantageInputs.create(r, np.zeros(4, np.int32), lengths_N=np.ones(4))
  hard = run("gd2po", inputs, 1, batch_norm=False)
  snr = run("gd2po", inputs, 1, variant="snr", threshold=.2, batch_norm=False)
  ref = gd2po_reference(r, np.zeros(4, np.int32), np.ones(4, int), "snr", .2, whiten=False)
  np.testing.assert_allclose(snr, ref, **TOL)
  assert (hard == 0).tolist() == [False, True, False, False]
  assert (snr != 0).all()


def test_gd2po_snr_threshold_one_is_hard():
  """A conflicting row has |sum a| < sum |a|, so SNR with threshold 1 drops every conflict."""
  rng = np.random.default_rng(4)
  r, groups, lengths = random_batch(rng, 8, 2, 6)
  inputs = AdvantageInputs.create(r, groups, lengths_N=lengths)
  np.testing.assert_allclose(run("gd2po", inputs, 8, variant="snr", threshold=1.0),
                             run("gd2po", inputs, 8), **TOL)


def test_gd2po_options_fail_clearly():
  inputs = AdvantageInputs.create(np.ones((4, 2), np.float32), np.zeros(4, np.int32))
  with pytest.raises(ValueError, match="variant='soft'"):
    compute_advantages("gd2po", inputs, 1, variant="soft")
  with pytest.raises(ValueError, match="threshold"):
    compute_advantages("gd2po", inputs, 1, variant="snr", threshold=1.5)
  with pytest.raises(ValueError, match="lengths_N"):
    compute_advantages("gd2po", inputs, 1)
  a, _ = compute_advantages("gd2po", inputs, 1, batch_stats="sequence")
  np.testing.assert_array_equal(np.asarray(a), 0)


N, K, G = 12, 3, 4
SNR = jax.jit(lambda i: compute_advantages("gd2po", i, G, variant="snr", threshold=.5))
SNR_RAW = jax.jit(lambda i: ESTIMATORS.get("gd2po")(i, num_groups=G, variant="snr", threshold=.5))
grid_or_nan = st.sampled_from([i / 8 for i in range(-16, 17)] + [float("nan")])


@settings(max_examples=100, deadline=None, database=None)
@given(hnp.arrays(np.float32, (N, K), elements=grid_or_nan),
       hnp.arrays(np.int32, (N,), elements=st.integers(0, G - 1)),
       hnp.arrays(np.bool_, (N,), elements=st.booleans()),
       hnp.arrays(np.int32, (N,), elements=st.integers(1, 20)),
       st.randoms(use_true_random=False))
def test_gd2po_snr_properties(r, groups, valid, lengths, rnd):
  """Finite everywhere; permuting rows permutes advantages; a reward constant
  in a group has no part in that group's advantages."""
  fn = SNR
  make = lambda p: AdvantageInputs.create(r[p], groups[p], valid_N=valid[p], lengths_N=lengths[p])
  ident = np.arange(N)
  a, metrics = fn(make(ident))
  assert np.isfinite(np.asarray(a)).all()
  assert all(np.isfinite(np.asarray(v)).all() for v in metrics.values())
  perm = np.array(rnd.sample(range(N), N))
  np.testing.assert_allclose(np.asarray(fn(make(perm))[0]), np.asarray(a)[perm], rtol=1e-4,
                             atol=1e-4)
  r2 = r.copy()
  r2[groups == 0, 1] = .25
  _, diag = SNR_RAW(AdvantageInputs.create(r2, groups, valid_N=valid, lengths_N=lengths))
  np.testing.assert_allclose(np.asarray(diag["contrib_NK"])[(groups == 0) & valid, 1], 0,
                             atol=1e-6)


# --- MO-GRPO -----------------------------------------------------------------


def mo_grpo_reference(r, groups, eps):
  """MO-GRPO Eq. 5: sum_k (r_k - mean) / (population std + eps)."""
  out = np.zeros(len(groups))
  for g in np.unique(groups):
    rows = groups == g
    for k in range(r.shape[1]):
      x = r[rows, k].astype(np.float64)
      ok = ~np.isnan(x)
      z = np.zeros_like(x)
      if ok.sum() > 0:
        z[ok] = (x[ok] - x[ok].mean()) / (x[ok].std(ddof=0) + eps)
      out[rows] += z
  return out


def dvao_reference(r, groups, w):
  """DVAO Eq. 9: sum_k w_k (r_k - mu_k) / sum_l w_l sigma_l (population std)."""
  out = np.zeros(len(groups))
  for g in np.unique(groups):
    rows = np.where(groups == g)[0]
    x = r[rows].astype(np.float64)
    ok = ~np.isnan(x)
    mu = np.array([x[ok[:, k], k].mean() if ok[:, k].any() else 0 for k in range(x.shape[1])])
    sd = np.array([x[ok[:, k], k].std() if ok[:, k].any() else 0 for k in range(x.shape[1])])
    den = (w * sd).sum()
    if den > 0:
      out[rows] = (np.where(ok, x - mu, 0) * w).sum(1) / den
  return out


def test_dvao_formula_and_degenerate_groups():
  rng = np.random.default_rng(14)
  r, groups, _ = random_batch(rng, 12, 1, 6)
  r[groups == 0] = 2.                            # constant group: A = 0
  r[groups == 1] = np.nan                        # no reward at all
  r[groups == 2, 0] = 1.                         # one constant reward: weight 0
  r[rng.random(len(groups)) < .15, 1] = np.nan
  w = np.array([1., .5, 2.], np.float32)
  inputs = AdvantageInputs.create(r, groups, weights_K=w)
  ours = run("dvao", inputs, 12)
  np.testing.assert_allclose(ours, dvao_reference(r, groups, w.astype(np.float64)), **TOL)
  assert (ours[groups <= 1] == 0).all()
  # Bounded by the largest per-reward z-score (the paper's stability claim).
  z = np.abs(run("mo_grpo", AdvantageInputs.create(r[:, :1], groups), 12, eps=0.0))
  one = run("dvao", AdvantageInputs.create(r[:, :1], groups), 12)
  np.testing.assert_allclose(np.abs(one), z, **TOL)   # one reward: DVAO is its z-score


def test_dvao_worked_example():
  """Two rewards in a group of two: r1 = (1, 0) (std 1/2), r2 = (4, 0) (std 2):
  A = (1/2 + 2) / (1/2 + 2) = 1 for the first row; the wide reward takes 4/5 of it."""
  inputs = AdvantageInputs.create(np.array([[1, 4], [0, 0]], np.float32), np.zeros(2, np.int32))
  a, diag = jax.jit(lambda i: ESTIMATORS.get("dvao")(i, num_groups=1))(inputs)
  np.testing.assert_allclose(np.asarray(a), [1, -1], **TOL)
  np.testing.assert_allclose(np.asarray(diag["contrib_NK"])[0], [.2, .8], **TOL)


def test_mo_grpo_formula_and_degenerate_groups():
  rng = np.random.default_rng(12)
  r, groups, _ = random_batch(rng, 10, 1, 6)
  r[groups == 0] = 2.
  r[groups == 1] = np.nan
  r[rng.random(len(groups)) < .15, 1] = np.nan
  inputs = AdvantageInputs.create(r, groups)
  ours = run("mo_grpo", inputs, 10)
  np.testing.assert_allclose(ours, mo_grpo_reference(r, groups, 1e-4), **TOL)
  assert (ours[groups <= 1] == 0).all()
  half = run("mo_grpo", inputs, 10, sqrt_k=True)
  np.testing.assert_allclose(half, ours / np.sqrt(3), **TOL)


def test_mo_grpo_is_invariant_to_reward_scales():
  """The paper's point: rescaling one reward (a > 0, any shift) leaves A unchanged,
  while GRPO's A follows the reward with the largest spread."""
  rng = np.random.default_rng(13)
  r, groups, _ = random_batch(rng, 8, 3, 6, k=2)
  scaled = r * np.array([1., 100.], np.float32) + np.array([0., 7.], np.float32)
  a = run("mo_grpo", AdvantageInputs.create(r, groups), 8, eps=1e-9)
  b = run("mo_grpo", AdvantageInputs.create(scaled, groups), 8, eps=1e-9)
  np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)
  grpo = run("grpo", AdvantageInputs.create(scaled, groups), 8)
  only_second = run("grpo", AdvantageInputs.create(scaled[:, 1:], groups), 8)
  assert np.corrcoef(grpo, only_second)[0, 1] > .99
  assert np.corrcoef(a, only_second)[0, 1] < .99
