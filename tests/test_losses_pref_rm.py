"""Preference (DPO, IPO, RPO, MM-DPO) and reward-model losses: closed forms and invariants."""
import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlx.losses import (PAIR_LOSSES, RM_LOSSES, bradley_terry_loss, dpo_loss, ipo_loss,
                        mm_dpo_beta, mm_dpo_loss, multi_attribute_loss, multi_attribute_reward,
                        multi_response_loss, oprm_loss, oprm_preference_logprob, oprm_reward,
                        rpo_loss, soli_tie_loss, soli_tie_term)


def softplus(x):
  return math.log1p(math.exp(x))   # -log sigmoid(-x)


# Two pairs: (chosen, rejected, ref_chosen, ref_rejected) summed log-probs.
#   pair 0: h_w = -4 - (-5) = 1, h_l = -6 - (-5) = -1, h_w - h_l = 2
#   pair 1: h_w = -3 - (-2) = -1, h_l = -2 - (-2.5) = 0.5, h_w - h_l = -1.5
PAIRS = [jnp.array(v) for v in ([-4.0, -3.0], [-6.0, -2.0], [-5.0, -2.0], [-5.0, -2.5])]


def test_dpo_closed_form():
  loss, m = dpo_loss(*PAIRS, beta=0.5)
  want = (softplus(-1.0) + softplus(0.75)) / 2       # -log sigmoid(0.5 * 2), (0.5 * -1.5)
  assert float(loss) == pytest.approx(want, rel=1e-6)
  assert float(m["accuracy"]) == pytest.approx(0.5)
  assert float(m["reward_margin"]) == pytest.approx((1.0 - 0.75) / 2, rel=1e-6)
  assert PAIR_LOSSES.get("dpo") is dpo_loss


def test_ipo_closed_form():
  loss, _ = ipo_loss(*PAIRS, beta=0.5)               # target margin 1 / (2 beta) = 1
  assert float(loss) == pytest.approx(((2 - 1) ** 2 + (-1.5 - 1) ** 2) / 2, rel=1e-6)


def test_rpo_is_dpo_plus_per_token_nll():
  loss, m = rpo_loss(*PAIRS, beta=0.5, eta=0.7, chosen_lengths_N=jnp.array([4, 2]))
  dpo = (softplus(-1.0) + softplus(0.75)) / 2
  nll = (4.0 / 4 + 3.0 / 2) / 2
  assert float(loss) == pytest.approx(dpo + 0.7 * nll, rel=1e-6)
  loss_sum, _ = rpo_loss(*PAIRS, beta=0.5, eta=1.0)   # no lengths: summed NLL
  assert float(loss_sum) == pytest.approx(dpo + (4.0 + 3.0) / 2, rel=1e-6)


def test_mm_dpo_dynamic_beta():
  margin = jnp.array([0.0, 2.0, 1e4])
  beta = mm_dpo_beta(margin, beta0=0.1, w=0.5, k=0.5)
  np.testing.assert_allclose(beta, [0.1, 0.1 * (1 + 0.5 * (1 - math.exp(-1.0))), 0.15], rtol=1e-6)
  loss, m = mm_dpo_loss(*PAIRS, margin_N=jnp.array([0.0, 2.0]), beta0=0.1, w=0.5, k=0.5)
  b1 = 0.1 * (1 + 0.5 * (1 - math.exp(-1.0)))
  assert float(loss) == pytest.approx((softplus(-0.2) + softplus(1.5 * b1)) / 2, rel=1e-6)
  assert float(m["beta_mean"]) == pytest.approx((0.1 + b1) / 2, rel=1e-6)


def test_pair_losses_jit_with_masked_rows():
  nan = jnp.nan
  padded = [jnp.concatenate([x, jnp.array([nan])]) for x in PAIRS]
  mask = jnp.array([1, 1, 0])
  for name in ("dpo", "ipo", "rpo"):
    fn = PAIR_LOSSES.get(name)
    f = jax.jit(lambda c, r, rc, rr: fn(c, r, rc, rr, mask_N=mask)[0])
    got = f(*padded)
    want = fn(*PAIRS)[0]
    assert float(got) == pytest.approx(float(want), rel=1e-6), name
    grads = jax.grad(f, argnums=(0, 1))(*padded)
    for g in grads:
      assert np.all(np.isfinite(np.asarray(g))) and float(g[2]) == 0.0


def test_bradley_terry_margin_and_centring():
  rw, rl = jnp.array([2.0, 0.0]), jnp.array([0.5, 1.0])
  loss, m = bradley_terry_loss(rw, rl)
  assert float(loss) == pytest.approx((softplus(-1.5) + softplus(1.0)) / 2, rel=1e-6)
  assert float(m["accuracy"]) == pytest.approx(0.5)
  loss, _ = bradley_terry_loss(rw, rl, margin=jnp.array([0.5, 1.0]), center_coef=0.01)
  want = (softplus(-1.0) + 0.01 * 2.5 ** 2 + softplus(2.0) + 0.01 * 1.0) / 2
  assert float(loss) == pytest.approx(want, rel=1e-6)
  assert RM_LOSSES.get("bradley_terry") is bradley_terry_loss


def test_soli_tie_term_smallest_at_equal_scores():
  gaps = jnp.linspace(-3, 3, 61)
  for m in (0.0, 0.5):
    vals = soli_tie_term(gaps, jnp.zeros_like(gaps), margin=m)
    assert float(gaps[jnp.argmin(vals)]) == pytest.approx(0.0, abs=1e-6)
    assert float(vals.min()) == pytest.approx(2 * softplus(m), rel=1e-6)
    assert np.all(np.diff(np.asarray(vals)[30:]) > 0)   # grows with the gap
  r1, r2 = jnp.array([1.0, 0.3, 2.0]), jnp.array([0.0, 0.3, -1.0])
  loss, metrics = soli_tie_loss(r1, r2, jnp.array([False, True, True]), margin=0.2)
  want = (softplus(-(1.0 - 0.2)) + 2 * softplus(0.0) + softplus(-3.0) + softplus(3.0)) / 3
  assert float(loss) == pytest.approx(want, rel=1e-6)
  assert float(metrics["tie_abs_gap"]) == pytest.approx(1.5, rel=1e-6)


# ----------------------------------------------------------------------------
# OPRM
# ----------------------------------------------------------------------------

def _probs(logits):
  e = np.exp(logits - logits.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


def test_oprm_preference_probability_and_reward_brute_force():
  rng = np.random.default_rng(0)
  s = 5
  lc, lr = rng.normal(0, 1.5, (3, s)), rng.normal(0, 1.5, (3, s))
  pc, pr = _probs(lc), _probs(lr)
  want_p = np.array([sum(pc[n, i] * pr[n, j] for i in range(s) for j in range(s) if i > j)
                     for n in range(3)])
  got = np.exp(np.asarray(oprm_preference_logprob(jnp.asarray(lc, jnp.float32),
                                                  jnp.asarray(lr, jnp.float32))))
  np.testing.assert_allclose(got, want_p, rtol=1e-5)
  loss, m = oprm_loss(jnp.asarray(lc, jnp.float32), jnp.asarray(lr, jnp.float32))
  assert float(loss) == pytest.approx(-np.log(want_p).mean(), rel=1e-5)
  np.testing.assert_allclose(oprm_reward(jnp.asarray(lc, jnp.float32)),
                             pc @ np.arange(1, s + 1), rtol=1e-5)
  # one-hot ratings: P(c > r) is 1 when c's rating is higher
  onehot = lambda k: jnp.asarray(np.where(np.arange(s) == k - 1, 30.0, -30.0)[None], jnp.float32)
  assert float(jnp.exp(oprm_preference_logprob(onehot(4), onehot(2)))[0]) == pytest.approx(1.0)
  assert float(oprm_reward(onehot(4))[0]) == pytest.approx(4.0)
  assert RM_LOSSES.get("ordinal") is oprm_loss


def test_oprm_region_flooding_brute_force_and_effect():
  rng = np.random.default_rng(1)
  s = 9
  regions = ((1, 4), (6, 9))                         # bad, good
  lc, lr = rng.normal(0, 1, (4, s)), rng.normal(0, 1, (4, s))
  rc = np.array([1, 1, -1, 0])                       # chosen: good, good, unannotated, bad
  rr = np.array([0, 1, -1, 1])                       # rejected: bad, good, unannotated, good
  pc, pr = _probs(lc), _probs(lr)
  sets = {0: range(1, 5), 1: range(6, 10), -1: range(1, 10)}
  want = []
  for n in range(4):
    cells = [(i, j) for i, j in itertools.product(range(1, 10), repeat=2)
             if i > j and i in sets[rc[n]] and j in sets[rr[n]]]
    if not cells:                                    # contradicts the label: plain OPRM
      cells = [(i, j) for i, j in itertools.product(range(1, 10), repeat=2) if i > j]
    want.append(sum(pc[n, i - 1] * pr[n, j - 1] for i, j in cells))
  got = np.exp(np.asarray(oprm_preference_logprob(
      jnp.asarray(lc, jnp.float32), jnp.asarray(lr, jnp.float32),
      jnp.asarray(rc), jnp.asarray(rr), regions)))
  np.testing.assert_allclose(got, want, rtol=1e-5)
  # Gradient descent on the flooded loss moves mass into the annotated regions.
  good, bad = np.arange(s) >= 5, np.arange(s) <= 3
  x = (jnp.asarray(lc[:1], jnp.float32), jnp.asarray(lr[:1], jnp.float32))
  f = jax.jit(jax.grad(lambda c, r: oprm_loss(c, r, region_c_N=jnp.array([1]),
                                              region_r_N=jnp.array([0]), regions=regions)[0],
                       argnums=(0, 1)))
  for _ in range(50):
    gc, gr = f(*x)
    x = (x[0] - 0.5 * gc, x[1] - 0.5 * gr)
  assert _probs(np.asarray(x[0]))[0, good].sum() > max(0.9, pc[0, good].sum())
  assert _probs(np.asarray(x[1]))[0, bad].sum() > max(0.9, pr[0, bad].sum())
  with pytest.raises(ValueError, match="regions"):
    oprm_loss(x[0], x[1], region_c_N=jnp.array([0]))


def test_oprm_masked_rows_finite():
  lc = jnp.array([[0.1, 0.5, -0.2], [jnp.nan, jnp.inf, 0.0]])
  lr = jnp.array([[0.3, -0.1, 0.0], [jnp.nan, 0.0, 0.0]])
  f = jax.jit(lambda a, b: oprm_loss(a, b, mask_N=jnp.array([1, 0]))[0])
  assert float(f(lc, lr)) == pytest.approx(float(oprm_loss(lc[:1], lr[:1])[0]), rel=1e-6)
  for g in jax.grad(f, argnums=(0, 1))(lc, lr):
    assert np.all(np.isfinite(np.asarray(g))) and np.all(np.asarray(g[1]) == 0)


# ----------------------------------------------------------------------------
# Multi-response and multi-attribute
# ----------------------------------------------------------------------------

def test_multi_response_cross_entropy():
  scores = jnp.array([[1.0, 2.0, 0.5], [0.0, 3.0, -9.0]])
  best = jnp.array([1, 0])
  mask = jnp.array([[1, 1, 1], [1, 1, 0]])         # third response of row 1 is padding
  loss, m = multi_response_loss(scores, best, mask_NM=mask)
  l0 = -(2.0 - math.log(math.exp(1) + math.exp(2) + math.exp(0.5)))
  l1 = -(0.0 - math.log(1 + math.exp(3)))
  assert float(loss) == pytest.approx((l0 + l1) / 2, rel=1e-6)
  assert float(m["accuracy"]) == pytest.approx(0.5)


def test_multi_attribute_masked_mse_and_reward():
  pred = jnp.array([[1.0, 2.0, 3.0], [0.0, 1.0, 4.0]])
  target = jnp.array([[2.0, 2.0, jnp.nan], [0.5, 0.0, 4.0]])
  mask = jnp.array([[1, 1, 0], [1, 1, 1]])
  loss, m = multi_attribute_loss(pred, target, mask_NK=mask)
  assert float(loss) == pytest.approx((1.0 + 0.0 + 0.25 + 1.0 + 0.0) / 5, rel=1e-6)
  assert float(m["mse_0"]) == pytest.approx((1.0 + 0.25) / 2, rel=1e-6)
  assert float(m["mse_2"]) == pytest.approx(0.0)
  g = jax.grad(lambda p: multi_attribute_loss(p, target, mask_NK=mask)[0])(pred)
  assert np.all(np.isfinite(np.asarray(g))) and float(g[0, 2]) == 0.0
  np.testing.assert_allclose(multi_attribute_reward(pred, [0.5, 0.25, 0.25]), [1.75, 1.25])
