"""Reward shaping transforms (docs/methods.md section 2), pure functions and registry."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlx.advantages import AdvantageInputs
from rlx.advantages import transforms as tr


def test_conditioned_reward():
  out = tr.conditioned_reward(jnp.array([.5, .7, .9]), jnp.array([1., 0., jnp.nan]), 1.0)
  np.testing.assert_allclose(out, [.5, 0, np.nan])


def test_overlong_penalty_piecewise():
  # Lmax 100, cache 20: 0 up to 80, linear to -1 at 100, -1 beyond.
  out = tr.overlong_penalty(jnp.array([50, 80, 90, 100, 101]), 100, 20)
  np.testing.assert_allclose(out, [0, 0, -.5, -1, -1])


def test_reference_levels_and_log_sigmoid():
  ref = jnp.array([[0., 1., 2., 3.], [5., 5., 5., jnp.nan]])
  lv = jax.jit(tr.reference_levels)(ref)
  std0 = np.std([0, 1, 2, 3])
  np.testing.assert_allclose(lv, [1.5 + 1.0364334 * std0, 5.0], rtol=1e-5)
  emp = tr.reference_levels(ref, quantile=.5, method="empirical")
  np.testing.assert_allclose(emp, [1.5, 5.0])
  u = tr.log_sigmoid_transform(jnp.array([1.0, 5.0]), jnp.array([1.0, 3.0]))
  np.testing.assert_allclose(u, [math.log(.5), math.log(1 / (1 + math.exp(-2)))], rtol=1e-6)


def test_calibration_and_transforms():
  ref = jnp.array([[0., 1., 1., 2.], [3., jnp.nan, jnp.nan, jnp.nan]])
  c = tr.calibrate(jnp.array([1., 2.5, 3.]), ref, jnp.array([0, 0, 1]))
  # 1 vs (0,1,1,2): 1 below + .5 * 2 ties = 2/4; 2.5: 4/4; 3 vs (3): .5.
  np.testing.assert_allclose(c, [.5, 1., .5])
  np.testing.assert_allclose(tr.calibration_transform(c, "bon", 2.), np.exp(2 * np.array(c)))
  np.testing.assert_allclose(tr.calibration_transform(c, "won", 2.), -np.exp(-2 * np.array(c)))
  np.testing.assert_allclose(tr.calibration_transform(c, "identity"), c)


def test_ensemble_aggregate():
  s = jnp.array([[1., 2., 6.], [4., jnp.nan, 2.]])
  np.testing.assert_allclose(tr.ensemble_aggregate(s, "mean"), [3., 3.])
  np.testing.assert_allclose(tr.ensemble_aggregate(s, "median"), [2., 3.])
  np.testing.assert_allclose(tr.ensemble_aggregate(s, "min"), [1., 2.])
  np.testing.assert_allclose(tr.ensemble_aggregate(s, "mean_minus_std", lam=.5),
                             [3 - .5 * np.std([1, 2, 6]), 3 - .5 * 1.], rtol=1e-6)
  with pytest.raises(ValueError, match="'max'.*'mean'"):
    tr.ensemble_aggregate(s, "max")


def test_difficulty_scale_and_deconfound():
  np.testing.assert_allclose(tr.difficulty_scale(jnp.ones((2, 2)), jnp.array([2., 3.])),
                             [[2, 2], [3, 3]])
  rng = np.random.default_rng(0)
  f = rng.normal(size=(40, 2)).astype(np.float32)
  r = (2 * f[:, 0] - f[:, 1] + 3 + .1 * rng.normal(size=40)).astype(np.float32)
  r[5] = np.nan
  res = np.asarray(jax.jit(tr.deconfound)(jnp.asarray(r), jnp.asarray(f)))
  ok = ~np.isnan(r)
  x = np.concatenate([np.ones((40, 1)), f], 1)[ok]
  beta = np.linalg.lstsq(x, r[ok].astype(np.float64), rcond=None)[0]
  np.testing.assert_allclose(res[ok], r[ok] - x @ beta, atol=1e-4)
  assert np.isnan(res[5])
  np.testing.assert_allclose(x.T @ res[ok], 0, atol=1e-3)     # residual orthogonal to features


def test_cmo_weights():
  # acc mean .5 (difficulty .5), fmt mean .75 (.25); corr(acc, fmt) = -1/sqrt(3).
  r = jnp.array([[1., 0.], [1., 1.], [0., 1.], [0., 1.]])
  w = np.asarray(jax.jit(tr.cmo_weights)(r))
  corr = np.corrcoef(np.asarray(r).T)[0, 1]
  raw = np.array([.5 - corr, .25 - corr])
  np.testing.assert_allclose(w, raw / raw.sum(), rtol=1e-5)
  np.testing.assert_allclose(jax.jit(tr.cmo_weights)(jnp.ones((3, 2))), [.5, .5])


def test_registry_composition_in_jit():
  r = np.array([[1., 50.], [0., 60.], [1., 70.], [1., 80.]], np.float32)
  inputs = AdvantageInputs.create(
      r, [0, 0, 1, 1], reward_names=("correct", "length_score"), lengths_N=[10, 95, 100, 120],
      extras={"difficulty_scale_G": jnp.array([2., 1.])})
  specs = [
      {"name": "conditioned", "target": "length_score", "condition": "correct"},
      ("overlong_penalty", {"max_length": 100, "cache_length": 10}),
      {"name": "difficulty_scale", "columns": ["correct"]},
  ]
  out = jax.jit(lambda i: tr.apply_transforms(i, specs))(inputs)
  assert out.reward_names == ("correct", "length_score", "overlong")
  np.testing.assert_allclose(out.rewards_NK, [[2, 50, 0], [0, 0, -.5], [1, 70, -1], [1, 80, -1]])
  np.testing.assert_allclose(out.weights_K, [1, 1, 1])


def test_registered_calibrate_log_sigmoid_ensemble_deconfound_cmo():
  r = np.array([[1., 2., 3.], [2., 2., np.nan], [0., 4., 1.]], np.float32)
  ref = np.array([[[0., 0., 0.], [2., 2., 2.]]], np.float32)        # [G=1, M=2, K=3]
  inputs = AdvantageInputs.create(
      r, [0, 0, 0], reward_names=("a", "b", "c"),
      extras={"reference_rewards_GMK": ref, "reference_levels_GK": np.array([[1., 2., 3.]]),
              "confounders_NF": np.array([[0.], [1.], [2.]], np.float32)})
  apply = lambda specs: jax.jit(lambda i: tr.apply_transforms(i, specs))(inputs)  # noqa: E731
  cal = apply([{"name": "calibrate", "columns": ["a"], "mode": "bon"}])
  np.testing.assert_allclose(cal.rewards_NK[:, 0], np.exp([.5, .75, .25]))
  ls = apply([{"name": "log_sigmoid"}])
  np.testing.assert_allclose(ls.rewards_NK[0], np.log(1 / (1 + np.exp(-np.zeros(3)))), rtol=1e-6)
  assert np.isnan(ls.rewards_NK[1, 2])
  ens = apply([{"name": "ensemble", "columns": ["b", "c"], "method": "min"}])
  assert ens.reward_names == ("a", "ensemble")
  np.testing.assert_allclose(ens.rewards_NK[:, 1], [2, 2, 1])
  dec = apply([{"name": "deconfound", "columns": "a"}])
  # a = (1, 2, 0) on f = (0, 1, 2): fit 1.5 - .5 f, residual (-.5, 1, -.5).
  np.testing.assert_allclose(dec.rewards_NK[:, 0], [-.5, 1, -.5], atol=1e-5)
  cmo = apply([{"name": "cmo_weights"}])
  np.testing.assert_allclose(float(cmo.weights_K.sum()), 1.0, rtol=1e-6)


def test_transform_errors():
  inputs = AdvantageInputs.create(np.zeros((2, 1), np.float32), [0, 0], reward_names=("a",))
  with pytest.raises(KeyError, match="Valid choices"):
    tr.apply_transforms(inputs, [{"name": "clip"}])
  with pytest.raises(TypeError, match=r"reward transform 'conditioned': unknown option "
                     r"'thresh'.*threshold=1.0"):
    tr.apply_transforms(inputs, [{"name": "conditioned", "target": "a", "condition": "a",
                                  "thresh": 1}])
  with pytest.raises(KeyError, match="Unknown reward 'b'"):
    tr.apply_transforms(inputs, [{"name": "conditioned", "target": "b", "condition": "a"}])
  with pytest.raises(KeyError, match="confounders_NF"):
    tr.apply_transforms(inputs, [{"name": "deconfound"}])
