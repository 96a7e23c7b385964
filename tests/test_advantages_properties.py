"""Property tests (hypothesis) of all advantage estimators on fixed shapes.

Each estimator is jitted once per shape; NaN rewards, invalid rows, single-
member and empty groups come from the generated data.
"""
import functools

import jax
import numpy as np
from hypothesis import example, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from rlx.advantages import ESTIMATORS, AdvantageInputs, compute_advantages, fit_reference_stats

N, K, G, T, U, M = 12, 3, 4, 4, 3, 3
GRID = [i / 8 for i in range(-16, 17)]            # dyadic: sums are exact in float32
NAN = float("nan")

REF_STATS = fit_reference_stats(np.array([[0, 1, 2], [1, -1, 0], [.5, 0, 1]], np.float32))
OPTIONS = {
    "agent_grouping": dict(num_agents=2),
    "tmn_reweight": dict(num_tasks=2),
    "reference_frozen": dict(stats=REF_STATS),
    "gdpo_token": dict(batch_stats="token"),
    "per_reward_mixed": dict(normalizers=["rank", "loo", "batch_z"]),
    "per_reward_center": dict(normalizers="group_center"),
    "bnpo_sum": dict(decompose=False, reward_max=3.0),
}
BUILTIN = ["grpo", "dr_grpo", "rloo", "reinforce_batch", "gdpo", "mrn", "bnpo", "tmn_reweight",
           "agent_grouping", "pref_grpo", "f_grpo", "mapo", "reference_frozen", "lightningrl",
           "per_reward"]
VARIANTS = BUILTIN + ["gdpo_token", "per_reward_mixed", "per_reward_center", "bnpo_sum"]
# Group-relative estimators whose advantage is 0 in a group where every reward is constant.
GROUP_CENTERED = ["grpo", "dr_grpo", "rloo", "mrn", "bnpo", "tmn_reweight", "agent_grouping",
                  "per_reward", "per_reward_center", "bnpo_sum"]
# Estimators reporting per-reward parts (contrib_NK) of A.
DECOUPLED = ["gdpo", "mrn", "bnpo", "lightningrl", "per_reward", "per_reward_mixed",
             "per_reward_center", "gdpo_token"]


def _base(variant):
  return variant.split("_")[0] if variant not in ESTIMATORS else variant


@functools.lru_cache(maxsize=None)
def adv_fn(variant, diagnostics=False):
  name = variant if variant in ESTIMATORS else {
      "gdpo_token": "gdpo", "per_reward_mixed": "per_reward",
      "per_reward_center": "per_reward", "bnpo_sum": "bnpo"}[variant]
  opts = OPTIONS.get(variant, {})
  return jax.jit(lambda i: compute_advantages(name, i, G, diagnostics=diagnostics, **opts))


@functools.lru_cache(maxsize=None)
def raw_fn(variant):
  """The registered estimator itself (returns its contrib_NK)."""
  name = {"gdpo_token": "gdpo", "per_reward_mixed": "per_reward",
          "per_reward_center": "per_reward"}.get(variant, variant)
  fn = ESTIMATORS.get(name)
  opts = OPTIONS.get(variant, {})
  return jax.jit(lambda i: fn(i, num_groups=G, **opts))


def rewards_strategy(elements, k=K):
  return hnp.arrays(np.float32, (N, k), elements=elements)


grid_or_nan = st.sampled_from(GRID + [NAN])
any_float = st.one_of(st.floats(-1e4, 1e4, width=32), st.just(NAN))


@st.composite
def batches(draw, elements=grid_or_nan, k=K):
  r = draw(rewards_strategy(elements, k))
  return dict(
      rewards=r,
      groups=draw(hnp.arrays(np.int32, (N,), elements=st.integers(0, G - 1))),
      valid=draw(hnp.arrays(np.bool_, (N,), elements=st.booleans())),
      pairwise=draw(hnp.arrays(np.float32, (N, M), elements=st.sampled_from([0., .5, 1., NAN]))),
      phase=draw(hnp.arrays(np.bool_, (N, k, T), elements=st.booleans())),
      turns=draw(hnp.arrays(np.float32, (N, U), elements=grid_or_nan)),
      lengths=draw(hnp.arrays(np.int32, (N,), elements=st.integers(1, 20))),
      tasks=draw(hnp.arrays(np.int32, (N,), elements=st.integers(0, 1))),
      agents=draw(hnp.arrays(np.int32, (N,), elements=st.integers(0, 1))))


def make_inputs(b, perm=None):
  b = dict(b)
  if perm is not None:
    b = {key: v[perm] for key, v in b.items()}
  return AdvantageInputs.create(
      b["rewards"], b["groups"], valid_N=b["valid"], pairwise_NM=b["pairwise"],
      phase_mask_NZT=b["phase"], turn_scores_NU=b["turns"], lengths_N=b["lengths"],
      task_ids_N=b["tasks"], agent_ids_N=b["agents"],
      turn_ids_NT=np.tile(np.array([0, 1, 2, -1], np.int32), (N, 1)))


ALL_NAN = dict(rewards=np.full((N, K), NAN, np.float32), groups=np.zeros(N, np.int32),
               valid=np.ones(N, bool), pairwise=np.full((N, M), NAN, np.float32),
               phase=np.ones((N, K, T), bool), turns=np.full((N, U), NAN, np.float32),
               lengths=np.ones(N, np.int32), tasks=np.zeros(N, np.int32),
               agents=np.zeros(N, np.int32))
SINGLETONS = dict(ALL_NAN, rewards=np.arange(N * K, dtype=np.float32).reshape(N, K) / 7,
                  groups=np.arange(N, dtype=np.int32) % G, valid=np.arange(N) < G,
                  pairwise=np.full((N, M), .5, np.float32),
                  turns=np.ones((N, U), np.float32))
CONSTANT = dict(ALL_NAN, rewards=np.full((N, K), .1, np.float32), valid=np.ones(N, bool),
                pairwise=np.full((N, M), .5, np.float32), turns=np.full((N, U), .3, np.float32))
NO_ROWS = dict(CONSTANT, valid=np.zeros(N, bool))


@settings(max_examples=300, deadline=None, database=None)
@given(batches(elements=any_float))
@example(ALL_NAN)
@example(SINGLETONS)
@example(CONSTANT)
@example(NO_ROWS)
def test_outputs_finite(b):
  inputs = make_inputs(b)
  for variant in VARIANTS:
    a, metrics = adv_fn(variant)(inputs)
    assert np.isfinite(np.asarray(a)).all(), variant
    assert all(np.isfinite(np.asarray(v)).all() for v in metrics.values()), variant
  for variant in ("grpo", "gdpo"):
    _, metrics = adv_fn(variant, diagnostics=True)(inputs)
    bad = [key for key, v in metrics.items() if not np.isfinite(np.asarray(v)).all()]
    assert not bad, (variant, bad)


@settings(max_examples=150, deadline=None, database=None)
@given(batches(), st.randoms(use_true_random=False))
def test_permuting_rows_permutes_advantages(b, rnd):
  perm = np.array(rnd.sample(range(N), N))
  base, permuted = make_inputs(b), make_inputs(b, perm)
  for variant in VARIANTS:
    a = np.asarray(adv_fn(variant)(base)[0], np.float64)
    ap = np.asarray(adv_fn(variant)(permuted)[0], np.float64)
    tol = 1e-3 if _base(variant) == "bnpo" else 1e-4   # (a, b) fit amplifies rounding
    np.testing.assert_allclose(ap, a[perm], rtol=tol, atol=tol, err_msg=variant)


@settings(max_examples=300, deadline=None, database=None)
@given(batches(), st.integers(0, G - 1), st.integers(0, K - 1), st.sampled_from(GRID))
def test_reward_constant_in_group_contributes_zero(b, g, k, c):
  b = dict(b)
  members = b["groups"] == g
  r = b["rewards"].copy()
  r[members, k] = c
  b["rewards"] = r
  inputs = make_inputs(b)
  rows = members & b["valid"]
  for variant in DECOUPLED:
    if variant == "per_reward_mixed" and k == 2:
      continue  # batch_z is not group-relative
    _, diag = raw_fn(variant)(inputs)
    contrib = np.asarray(diag["contrib_NK"])
    np.testing.assert_allclose(contrib[rows, k], 0, atol=1e-6, err_msg=variant)
  # Every reward constant in the group: group-centered estimators give 0 there,
  # and the value of the constant does not matter for the summed ones.
  r[members] = c
  b["rewards"] = r
  inputs = make_inputs(b)
  other = dict(b, rewards=np.where(members[:, None], np.float32(c + .5), r))
  inputs2 = make_inputs(other)
  big = rows & (np.bincount(b["groups"][b["valid"]], minlength=G)[b["groups"]] > 1)
  for variant in GROUP_CENTERED:
    a = np.asarray(adv_fn(variant)(inputs)[0])
    rows_v = big if variant == "tmn_reweight" else rows     # TMN: G=1 has mean 0
    np.testing.assert_allclose(a[rows_v], 0, atol=1e-6, err_msg=variant)
    if variant in ("grpo", "dr_grpo", "rloo", "mrn", "per_reward"):
      np.testing.assert_allclose(np.asarray(adv_fn(variant)(inputs2)[0]), a, rtol=1e-5,
                                 atol=1e-5, err_msg=variant)


@functools.lru_cache(maxsize=None)
def single_reward_fn(name, **opts):
  return jax.jit(lambda i: compute_advantages(name, i, G, diagnostics=False, **opts)[0])


@settings(max_examples=300, deadline=None, database=None)
@given(batches(k=1))
def test_gdpo_one_reward_is_positive_multiple_of_grpo(b):
  inputs = make_inputs(b)
  a_gdpo = np.asarray(single_reward_fn("gdpo")(inputs), np.float64)
  a_grpo = np.asarray(single_reward_fn("grpo")(inputs), np.float64)
  nz = np.abs(a_grpo) > 1e-3
  if nz.any():
    ratio = a_gdpo[nz] / a_grpo[nz]
    assert (ratio > 0).all()
    np.testing.assert_allclose(ratio, ratio[0], rtol=1e-4)
    np.testing.assert_allclose(a_gdpo[~nz], ratio[0] * a_grpo[~nz], atol=1e-4)
  else:
    np.testing.assert_allclose(a_gdpo, 0, atol=1e-5)


unit_grid = st.sampled_from([i / 8 for i in range(9)] + [NAN])


@settings(max_examples=300, deadline=None, database=None)
@given(batches(elements=unit_grid, k=1))
def test_bnpo_with_a_b_one_is_reinforce_with_group_baseline(b):
  inputs = make_inputs(b)
  a_bnpo = np.asarray(single_reward_fn("bnpo", fixed_ab=(1.0, 1.0))(inputs))
  a_base = np.asarray(single_reward_fn("dr_grpo")(inputs))
  np.testing.assert_allclose(a_bnpo, a_base, atol=1e-6)
