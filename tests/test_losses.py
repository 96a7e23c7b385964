"""Policy-loss terms: aggregation table, surrogate gradients, KL estimators, TIS, DRPO, configs."""
import importlib.util
import math
import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hyp import examples

from rlx.losses import (LOSS_TERMS, LossInputs, aggregate, check_terms, drpo, kl_estimate,
                        policy_gradient, token_weights, total_loss, truncated_is_weights)

AGGS = ("token_mean", "seq_mean_token_mean", "seq_mean_token_sum", "constant")


def _x64():
  """Context manager enabling float64 inside a test only (jax 0.10 .. 0.12)."""
  if hasattr(jax, "enable_x64"):
    return jax.enable_x64(True)
  from jax.experimental import enable_x64  # older jax
  return enable_x64()


# Hand-built mask: lengths 3, 1, 0 (padding row), 4; N = 3 valid completions.
MASK = np.array([[1, 1, 1, 0], [1, 0, 0, 0], [0, 0, 0, 0], [1, 1, 1, 1]], np.float32)


def _expected_weights(mode, max_len=6):
  """docs/methods.md section 4 table, written out by hand for MASK."""
  if mode == "token_mean":                       # 1 / sum m = 1/8
    rows = [1 / 8, 1 / 8, 0, 1 / 8]
  elif mode == "seq_mean_token_mean":            # 1 / (N L_i)
    rows = [1 / 9, 1 / 3, 0, 1 / 12]
  elif mode == "seq_mean_token_sum":             # 1 / N
    rows = [1 / 3, 1 / 3, 0, 1 / 3]
  else:                                          # 1 / (N L_max)
    rows = [1 / 18, 1 / 18, 0, 1 / 18]
  return MASK * np.array(rows, np.float32)[:, None]


@pytest.mark.parametrize("mode", AGGS)
def test_aggregation_weights_match_methods_table(mode):
  w = token_weights(jnp.asarray(MASK), mode, max_len=6)
  np.testing.assert_allclose(np.asarray(w), _expected_weights(mode), rtol=1e-6)
  loss = np.arange(16, dtype=np.float32).reshape(4, 4)
  loss[MASK == 0] = np.nan   # padding must not leak
  got = aggregate(jnp.asarray(loss), jnp.asarray(MASK), mode, max_len=6)
  want = np.nansum(np.where(MASK > 0, loss, 0) * _expected_weights(mode))
  np.testing.assert_allclose(float(got), want, rtol=1e-6)


def test_aggregation_unknown_mode_lists_choices():
  with pytest.raises(ValueError, match="seq_mean_token_mean"):
    token_weights(jnp.asarray(MASK), "seq_mean")


# ----------------------------------------------------------------------------
# Surrogate gradients
# ----------------------------------------------------------------------------

def _pg_case(dtype, seed=0, token_adv=False):
  rng = np.random.default_rng(seed)
  n, t = 3, 4
  mask = np.array([[1, 1, 1, 1], [1, 1, 0, 0], [1, 1, 1, 0]], np.float64)
  logp = rng.normal(-1.0, 0.5, (n, t))
  old = logp + rng.choice([-0.45, -0.1, 0.1, 0.45], size=(n, t))   # some clipped, none at kinks
  adv = rng.normal(0, 1, (n, t)) if token_adv else np.array([1.3, -0.7, -2.0])
  return (jnp.asarray(logp, dtype), jnp.asarray(old, dtype), jnp.asarray(adv, dtype),
          jnp.asarray(mask, dtype))


PG_CONFIGS = [
    dict(aggregation="token_mean", clip_high=0.28),
    dict(aggregation="seq_mean_token_mean"),
    dict(aggregation="seq_mean_token_sum", dual_clip=True, dual_clip_c=1.2),
    dict(aggregation="constant"),
    dict(aggregation="seq_mean_token_mean", ratio_level="sequence", clip_low=0.05, clip_high=0.05),
]


@pytest.mark.parametrize("cfg", PG_CONFIGS, ids=lambda c: "-".join(map(str, c.values())))
def test_surrogate_gradient_matches_finite_differences(cfg):
  with _x64():
    logp, old, adv, mask = _pg_case(jnp.float64)

    def f(lp):
      return policy_gradient(LossInputs(logp_NT=lp, mask_NT=mask, advantages=adv,
                                        old_logp_NT=old, max_len=7), **cfg)

    loss_fn = jax.jit(lambda lp: f(lp)[0])
    grad = np.asarray(jax.jit(jax.grad(lambda lp: f(lp)[0]))(logp))
    _, metrics = f(logp)
    # The case exercises clipping (otherwise the check would be trivial).
    assert float(metrics["clip_frac_low"]) + float(metrics["clip_frac_high"]) > 0
    h = 1e-6
    fd = np.zeros_like(grad)
    base = np.asarray(logp)
    for idx in np.ndindex(*base.shape):
      e = np.zeros_like(base)
      e[idx] = h
      up, down = loss_fn(jnp.asarray(base + e)), loss_fn(jnp.asarray(base - e))
      fd[idx] = (float(up) - float(down)) / (2 * h)
    np.testing.assert_allclose(grad, fd, atol=1e-8, rtol=1e-6)
    assert np.all(grad[np.asarray(mask) == 0] == 0)


def test_dual_clip_caps_negative_advantage_loss():
  logp = jnp.zeros((1, 2))
  old = jnp.log(jnp.array([[1 / 5.0, 1 / 2.0]]))   # ratios 5 and 2
  inp = LossInputs(logp_NT=logp, mask_NT=jnp.ones((1, 2)), advantages=jnp.array([-1.0]),
                   old_logp_NT=old)
  plain, _ = policy_gradient(inp, aggregation="seq_mean_token_sum")
  dual, m = policy_gradient(inp, aggregation="seq_mean_token_sum", dual_clip=True)
  assert float(plain) == pytest.approx(5.0 + 2.0, rel=1e-6)     # max(-A r, -A clip r) = r
  assert float(dual) == pytest.approx(3.0 + 2.0, rel=1e-6)      # capped at -A c = 3
  assert float(m["dual_clip_frac"]) == pytest.approx(0.5)


@pytest.mark.parametrize("mode", AGGS)
@pytest.mark.parametrize("token_adv", [False, True])
def test_ratio_one_gradient_is_plain_policy_gradient(mode, token_adv):
  logp, _, adv, mask = _pg_case(jnp.float32, seed=1, token_adv=token_adv)
  inp = LossInputs(logp_NT=logp, mask_NT=mask, advantages=adv, max_len=6)   # old = sg(logp)
  g = jax.grad(lambda lp: policy_gradient(inp.replace(logp_NT=lp), aggregation=mode,
                                          clip_high=0.28)[0])(logp)
  m = np.asarray(mask)
  lens = m.sum(-1, keepdims=True)
  w = {"token_mean": m / m.sum(), "seq_mean_token_mean": m / (3 * lens),
       "seq_mean_token_sum": m / 3, "constant": m / (3 * 6)}[mode]
  a = np.asarray(adv) if token_adv else np.asarray(adv)[:, None]
  np.testing.assert_allclose(np.asarray(g), -a * w, rtol=1e-5, atol=1e-7)


def test_gspo_sequence_ratio_gradient_at_ratio_one():
  logp, _, adv, mask = _pg_case(jnp.float32, seed=2)
  inp = LossInputs(logp_NT=logp, mask_NT=mask, advantages=adv)
  g = jax.grad(lambda lp: policy_gradient(inp.replace(logp_NT=lp), ratio_level="sequence",
                                          aggregation="seq_mean_token_mean")[0])(logp)
  m = np.asarray(mask)
  want = -np.asarray(adv)[:, None] * m / (3 * m.sum(-1, keepdims=True))
  np.testing.assert_allclose(np.asarray(g), want, rtol=1e-5, atol=1e-7)


def test_pg_metrics_hand_example():
  # Ratios: 1.5 (A>0, clipped high), 0.5 (A<0, clipped low), 1.0, 1.1.
  ratio = np.array([[1.5, 0.5], [1.0, 1.1]], np.float32)
  logp = jnp.zeros((2, 2))
  inp = LossInputs(logp_NT=logp, mask_NT=jnp.ones((2, 2)),
                   advantages=jnp.array([[1.0, -1.0], [1.0, 1.0]]),
                   old_logp_NT=jnp.asarray(-np.log(ratio)))
  loss, m = policy_gradient(inp, clip_low=0.2, clip_high=0.28)
  assert float(m["clip_frac_high"]) == pytest.approx(0.25)
  assert float(m["clip_frac_low"]) == pytest.approx(0.25)
  assert float(m["ratio_min"]) == pytest.approx(0.5, rel=1e-6)
  assert float(m["ratio_max"]) == pytest.approx(1.5, rel=1e-6)
  assert float(m["ratio_mean"]) == pytest.approx(ratio.mean(), rel=1e-6)
  # token losses: -1.28, 0.8, -1.0, -1.1
  assert float(loss) == pytest.approx((-1.28 + 0.8 - 1.0 - 1.1) / 4, rel=1e-6)
  # approx_kl: k3 estimate of KL(sampling policy = old || current), d = logp - old_logp = log r
  d = np.log(ratio)
  assert float(m["approx_kl"]) == pytest.approx(np.mean(np.exp(d) - d - 1), rel=1e-5)


# ----------------------------------------------------------------------------
# KL estimators
# ----------------------------------------------------------------------------

@settings(max_examples=examples(200))
@given(st.lists(st.floats(-60, 60, width=32), min_size=1, max_size=16),
       st.lists(st.floats(-60, 60, width=32), min_size=1, max_size=16))
def test_k3_nonnegative(a, b):
  n = min(len(a), len(b))
  k3 = kl_estimate(jnp.asarray(a[:n], jnp.float32), jnp.asarray(b[:n], jnp.float32), "k3")
  assert np.all(np.asarray(k3) >= 0)


def test_kl_estimators_converge_to_true_kl():
  rng = np.random.default_rng(0)
  q = rng.dirichlet(np.ones(6))            # policy (samples come from q)
  p = rng.dirichlet(np.ones(6))            # reference
  n = 40000
  x = rng.choice(6, size=n, p=q)
  logq, logp = np.log(q)[x], np.log(p)[x]
  inputs = LossInputs(logp_NT=jnp.asarray(logq[:, None], jnp.float32),
                      mask_NT=jnp.ones((n, 1), jnp.float32),
                      ref_logp_NT=jnp.asarray(logp[:, None], jnp.float32))
  true_kl = float(np.sum(q * (np.log(q) - np.log(p))))
  d = np.log(p) - np.log(q)
  k2_expect = float(np.sum(q * d ** 2 / 2))
  per_sample = {"k1": -d[x], "k2": d[x] ** 2 / 2, "k3": np.exp(d[x]) - d[x] - 1}
  for est, target in (("k1", true_kl), ("k3", true_kl), ("k2", k2_expect)):
    loss, _ = total_loss({"kl": {"coef": 1.0, "estimator": est}}, inputs)
    se = per_sample[est].std() / math.sqrt(n)
    assert abs(float(loss) - target) < 3 * se, (est, float(loss), target, se)
  assert abs(k2_expect - true_kl) > 3 * per_sample["k2"].std() / math.sqrt(n)  # k2 is biased here


def test_k3_straight_through_value_k3_gradient_k2():
  logp = jnp.array([-1.0, -0.3, -2.0])
  ref = jnp.array([-1.5, -0.1, -0.4])
  st_val = kl_estimate(logp, ref, "k3_st")
  np.testing.assert_allclose(st_val, kl_estimate(logp, ref, "k3"), rtol=1e-6)
  g_st = jax.grad(lambda lp: kl_estimate(lp, ref, "k3_st").sum())(logp)
  g_k2 = jax.grad(lambda lp: kl_estimate(lp, ref, "k2").sum())(logp)
  np.testing.assert_allclose(g_st, g_k2, rtol=1e-6)
  np.testing.assert_allclose(g_k2, logp - ref, rtol=1e-6)   # d(d^2/2)/dlogp = -d


# ----------------------------------------------------------------------------
# Truncated importance sampling
# ----------------------------------------------------------------------------

def _tis_case():
  old = np.array([[-1.0, -0.5, -2.0], [-0.2, -1.0, -1.0]], np.float32)
  sample = np.array([[-2.0, -0.4, -1.0], [-0.3, -1.0, -5.0]], np.float32)
  mask = np.array([[1, 1, 1], [1, 1, 0]], np.float32)
  return old, sample, mask


def test_truncated_is_weights_token_and_sequence():
  old, sample, mask = _tis_case()
  rho = np.exp(old - sample) * mask
  w, new_mask, m = truncated_is_weights(jnp.asarray(old), jnp.asarray(sample), jnp.asarray(mask),
                                        level="token", mode="truncate", cap=2.0)
  np.testing.assert_allclose(w, np.minimum(rho, 2.0) * mask, rtol=1e-6)
  np.testing.assert_array_equal(new_mask, mask)
  assert float(m["is_truncated_frac"]) == pytest.approx(1 / 5)   # only e^1 > 2
  seq = np.exp(((old - sample) * mask).sum(-1))                  # [e^0, e^0.1]
  w, _, _ = truncated_is_weights(jnp.asarray(old), jnp.asarray(sample), jnp.asarray(mask),
                                 level="sequence", mode="truncate", cap=1.05)
  np.testing.assert_allclose(w, np.minimum(seq, 1.05)[:, None] * mask, rtol=1e-6)
  # mask mode: keep 1/cap <= rho <= cap, weight rho, drop the rest from the mask
  w, new_mask, m = truncated_is_weights(jnp.asarray(old), jnp.asarray(sample), jnp.asarray(mask),
                                        level="token", mode="mask", cap=2.0)
  keep = (rho >= 0.5) & (rho <= 2.0) & (mask > 0)
  np.testing.assert_allclose(w, np.where(keep, rho, 0), rtol=1e-6)
  np.testing.assert_array_equal(new_mask, keep.astype(np.float32))
  assert float(m["is_masked_frac"]) == pytest.approx(2 / 5)     # e^1 and e^-1 dropped


def test_pg_with_tis_is_detached_weighted_policy_gradient():
  old, sample, mask = _tis_case()
  adv = jnp.array([1.0, -2.0])
  logp = jnp.asarray(old)
  inp = LossInputs(logp_NT=logp, mask_NT=jnp.asarray(mask), advantages=adv,
                   sample_logp_NT=jnp.asarray(sample))     # old = sg(logp): ratio 1

  def f(lp, sp):
    return policy_gradient(inp.replace(logp_NT=lp, sample_logp_NT=sp), is_mode="truncate",
                           is_cap=2.0)[0]

  g_lp, g_sp = jax.grad(f, argnums=(0, 1))(logp, jnp.asarray(sample))
  w_is = np.minimum(np.exp(old - sample), 2.0) * mask
  want = -np.asarray(adv)[:, None] * w_is * mask / mask.sum()
  np.testing.assert_allclose(g_lp, want, rtol=1e-5, atol=1e-7)
  np.testing.assert_array_equal(g_sp, np.zeros_like(sample))
  with pytest.raises(ValueError, match="sample_logp_NT"):
    policy_gradient(inp.replace(sample_logp_NT=None), is_mode="truncate")


# ----------------------------------------------------------------------------
# Entropy, NLL anchor, DRPO
# ----------------------------------------------------------------------------

def test_entropy_and_nll_correct_closed_forms():
  logp = jnp.array([[-1.0, -2.0, 9.0], [-0.5, -0.5, -0.5], [-3.0, 9.0, 9.0]])
  mask = jnp.array([[1, 1, 0], [1, 1, 1], [1, 0, 0]], jnp.float32)
  ent = jnp.array([[0.5, 1.5, jnp.nan], [1.0, 1.0, 1.0], [2.0, 0.0, 0.0]])
  inp = LossInputs(logp_NT=logp, mask_NT=mask, entropy_NT=ent,
                   correct_N=jnp.array([True, False, True]))
  loss, m = total_loss({"entropy": {"coef": 0.01}, "nll_correct": {"coef": 0.1}}, inp)
  ent_mean = (0.5 + 1.5 + 3.0 + 2.0) / 6
  nll = (1.0 + 2.0 + 3.0) / 3          # tokens of correct completions only
  assert float(m["entropy/loss"]) == pytest.approx(-ent_mean, rel=1e-6)
  assert float(m["nll_correct/loss"]) == pytest.approx(nll, rel=1e-6)
  assert float(loss) == pytest.approx(-0.01 * ent_mean + 0.1 * nll, rel=1e-6)
  assert float(m["nll_correct/frac_correct"]) == pytest.approx(2 / 3)


def _drpo_case():
  rng = np.random.default_rng(3)
  n, t = 7, 5
  logp = rng.normal(-1.0, 0.4, (n, t)).astype(np.float32)
  old = (logp + rng.normal(0, 0.05, (n, t))).astype(np.float32)
  lens = np.array([5, 2, 4, 3, 5, 1, 0])
  mask = (np.arange(t)[None] < lens[:, None]).astype(np.float32)
  correct = np.array([1, 0, 1, 0, 1, 1, 1])
  group = np.array([0, 0, 0, 0, 1, 1, 2])    # g0 mixed; g1 all correct; g2 padding row only
  return logp, old, mask, correct, group


def _drpo_reference(logp, old, mask, correct, group, lam, tau, beta, delta, l_max, coef_at=None):
  """Loops over groups, as docs/methods.md section 4 writes DRPO (coefficient as a constant)."""
  lens = np.asarray(mask).sum(-1)
  score = [jnp.sum(logp[i] * mask[i]) / max(lens[i], 1) for i in range(len(lens))]
  groups = sorted({g for g, l in zip(group, lens) if l > 0})
  total = 0.0
  for g in groups:
    pos = [i for i in range(len(lens)) if group[i] == g and lens[i] > 0 and correct[i]]
    neg = [i for i in range(len(lens)) if group[i] == g and lens[i] > 0 and not correct[i]]
    if not pos or not neg:
      continue
    z = np.array([(1 - lens[i] / l_max) / lam for i in pos])
    w = np.exp(z - z.max()) / np.exp(z - z.max()).sum()
    j = sum(w[k] * score[i] for k, i in enumerate(pos))
    j = j - tau * jnp.log(jnp.mean(jnp.stack([jnp.exp(score[i] / tau) for i in neg])))
    total = total + j
  d = (logp - old) * mask
  kl_tok = (jnp.exp(d) - d - 1) * mask
  kl = kl_tok.sum() / mask.sum()
  kl_value = float(jax.lax.stop_gradient(kl)) if coef_at is None else coef_at
  coef = max(beta * (kl_value - delta), 0.0)   # a constant: no gradient through it
  return -total / len(groups) + coef * kl


@pytest.mark.parametrize("beta", [1e3, 0.0])
def test_drpo_matches_reference_value_and_gradient(beta):
  logp, old, mask, correct, group = _drpo_case()
  opts = dict(lam=0.1, tau=10.0, beta=beta, delta=1e-4)
  inp = LossInputs(logp_NT=jnp.asarray(logp), mask_NT=jnp.asarray(mask),
                   old_logp_NT=jnp.asarray(old), correct_N=jnp.asarray(correct),
                   group_N=jnp.asarray(group), num_groups=4, max_len=8)
  f = lambda lp: drpo(inp.replace(logp_NT=lp), **opts)[0]
  d = (logp - old) * mask
  kl_np = float(((np.exp(d) - d - 1) * mask).sum() / mask.sum())
  assert beta == 0 or beta * (kl_np - 1e-4) > 0   # the constraint is active in the beta>0 case
  ref = lambda lp: _drpo_reference(lp, old, mask, correct, group,
                                   l_max=8, coef_at=kl_np, **opts)
  (v, g), (v_ref, g_ref) = [jax.jit(jax.value_and_grad(fn))(jnp.asarray(logp)) for fn in (f, ref)]
  np.testing.assert_allclose(float(v), float(v_ref), rtol=1e-5)
  np.testing.assert_allclose(g, g_ref, rtol=1e-4, atol=1e-6)
  _, m = drpo(inp, **opts)
  assert float(m["frac_groups_used"]) == pytest.approx(1 / 2)   # g0 of {g0, g1}


# ----------------------------------------------------------------------------
# jit, static shapes, masked rows
# ----------------------------------------------------------------------------

TERMS = {
    "pg": {"clip_low": 0.2, "clip_high": 0.28, "dual_clip": True, "is_mode": "truncate",
           "aggregation": "seq_mean_token_mean"},
    "kl": {"coef": 0.04, "estimator": "k3"},
    "entropy": {"coef": 0.01, "aggregation": "constant"},
    "nll_correct": {"coef": 0.1},
    "drpo": {"coef": 0.5},
}


def _full_inputs(with_padding_row):
  rng = np.random.default_rng(4)
  n, t = 5, 4
  logp = rng.normal(-1, 0.3, (n, t)).astype(np.float32)
  mask = np.array([[1, 1, 1, 0], [1, 1, 1, 1], [0, 0, 0, 0], [1, 1, 0, 0], [1, 0, 0, 0]],
                  np.float32)
  f = lambda x: np.where(mask > 0, x, np.nan).astype(np.float32)   # garbage in padding
  arrays = dict(
      logp_NT=f(logp), mask_NT=mask,
      advantages=np.array([1.0, -0.5, np.nan, 0.3, -1.0], np.float32),
      old_logp_NT=f(logp + rng.normal(0, 0.2, (n, t))),
      sample_logp_NT=f(logp + rng.normal(0, 0.3, (n, t))),
      ref_logp_NT=f(logp + rng.normal(0, 0.2, (n, t))),
      entropy_NT=f(rng.uniform(0, 2, (n, t))),
      correct_N=np.array([1, 0, 1, 1, 0], np.float32), group_N=np.array([0, 0, 3, 1, 1]))
  if not with_padding_row:
    keep = [0, 1, 3, 4]
    arrays = {k: v[keep] for k, v in arrays.items()}
    arrays = {k: (np.nan_to_num(v) if v.dtype.kind == "f" else v) for k, v in arrays.items()}
  return LossInputs(**{k: jnp.asarray(v) for k, v in arrays.items()}, num_groups=5, max_len=6)


def test_total_loss_jit_masked_rows_finite_and_invariant():
  def loss_fn(diff, inp):   # differentiable inputs: log-probs and entropies
    return total_loss(TERMS, inp.replace(logp_NT=diff[0], entropy_NT=diff[1]))

  grad_fn = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))
  run = lambda inp: grad_fn((inp.logp_NT, inp.entropy_NT), inp)
  padded = _full_inputs(True)
  (loss_pad, m_pad), g_pad = run(padded)
  (loss, m), _ = run(_full_inputs(False))
  assert np.isfinite(float(loss_pad))
  np.testing.assert_allclose(float(loss_pad), float(loss), rtol=1e-5)
  for k in m:
    np.testing.assert_allclose(float(m_pad[k]), float(m[k]), rtol=1e-5, atol=1e-7, err_msg=k)
  pad = np.asarray(padded.mask_NT) == 0
  for g in g_pad:
    g = np.asarray(g)
    assert np.all(np.isfinite(g)) and np.all(g[pad] == 0)
  assert np.any(np.asarray(g_pad[0])[~pad] != 0)
  # Every row masked: loss 0, gradients 0, nothing NaN (same jitted shapes).
  empty = padded.replace(mask_NT=jnp.zeros_like(padded.mask_NT))
  (loss0, m0), g0 = run(empty)
  assert float(loss0) == 0.0
  assert all(np.isfinite(float(v)) for v in m0.values())
  assert all(np.all(np.asarray(g) == 0) for g in g0)


# ----------------------------------------------------------------------------
# Config handling and user extension
# ----------------------------------------------------------------------------

def test_config_errors_name_term_and_choices():
  with pytest.raises(KeyError, match=r"'pgg'.*Did you mean 'pg'.*Valid choices"):
    check_terms({"pgg": {}})
  with pytest.raises(TypeError, match=r"loss term 'pg': unknown option 'clip_hi'. Valid "
                     r"options:.*clip_high"):
    check_terms({"pg": {"clip_hi": 0.28}})
  with pytest.raises(ValueError, match="loss term 'kl': missing required option 'coef'"):
    check_terms({"kl": {"estimator": "k3"}})
  with pytest.raises(ValueError, match="loss term 'kl': option estimator='k4' is not one of "
                     "'k1', 'k2', 'k3', 'k3_st'"):
    check_terms({"kl": {"coef": 0.1, "estimator": "k4"}})
  with pytest.raises(ValueError, match="aggregation='sum' is not one of 'token_mean'"):
    check_terms({"pg": {"aggregation": "sum"}})
  inp = LossInputs(logp_NT=jnp.zeros((1, 2)), mask_NT=jnp.ones((1, 2)))
  with pytest.raises(ValueError, match="'kl' needs LossInputs.ref_logp_NT"):
    total_loss({"kl": {"coef": 0.1}}, inp)
  with pytest.raises(ValueError, match="no terms"):
    check_terms({})


def test_config_dict_and_labelled_terms():
  import ml_collections
  logp = jnp.array([[-1.0, -2.0]])
  inp = LossInputs(logp_NT=logp, mask_NT=jnp.ones((1, 2)), ref_logp_NT=jnp.array([[-1.5, -1.0]]),
                   old_logp_NT=jnp.array([[-1.2, -2.1]]), advantages=jnp.array([0.5]))
  cfg = ml_collections.ConfigDict({"terms": {
      "pg": {"clip_high": 0.28},
      "kl_k1": {"term": "kl", "coef": 0.5, "estimator": "k1"},
      "kl_k2": {"term": "kl", "coef": 0.25, "estimator": "k2"}}})
  loss, m = total_loss(cfg.terms, inp)
  d = np.array([-0.5, 1.0])
  assert float(m["kl_k1/loss"]) == pytest.approx(np.mean(-d), rel=1e-6)
  assert float(m["kl_k2/loss"]) == pytest.approx(np.mean(d ** 2 / 2), rel=1e-6)
  assert float(loss) == pytest.approx(float(m["pg/loss"]) + 0.5 * np.mean(-d)
                                      + 0.25 * np.mean(d ** 2 / 2), rel=1e-6)


def _load_user_module():
  name = "user_loss_example"
  if name not in sys.modules:
    spec = importlib.util.spec_from_file_location(
        name, pathlib.Path(__file__).with_name("user_loss_example.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
  return sys.modules[name]


def test_user_registered_term_selected_by_config():
  _load_user_module()
  assert "seq_logp_l2" in LOSS_TERMS
  logp = jnp.array([[-1.0, -3.0, 7.0], [-0.5, 7.0, 7.0]])
  mask = jnp.array([[1, 1, 0], [1, 0, 0]], jnp.float32)
  inp = LossInputs(logp_NT=logp, mask_NT=mask, advantages=jnp.array([1.0, -1.0]))
  terms = {"pg": {}, "seq_logp_l2": {"coef": 0.5, "target": -1.0}}
  loss, m = jax.jit(lambda i: total_loss(terms, i))(inp)
  want_user = ((-2.0 + 1.0) ** 2 + (-0.5 + 1.0) ** 2) / 2
  assert float(m["seq_logp_l2/loss"]) == pytest.approx(want_user, rel=1e-6)
  assert float(m["seq_logp_l2/score_mean"]) == pytest.approx((-2.0 - 0.5) / 2, rel=1e-6)
  assert float(loss) == pytest.approx(float(m["pg/loss"]) + 0.5 * want_user, rel=1e-6)
  with pytest.raises(TypeError, match="Valid options: coef, term, target"):
    check_terms({"seq_logp_l2": {"targte": 1.0}})
