"""Property tests (hypothesis) of all advantage estimators on fixed shapes.

Each estimator is jitted once per shape; NaN rewards, invalid rows, single-
member and empty groups come from the generated data. Every estimator also
runs with eps = 0 (the `*_eps0` variants): a std at the rounding level counts
as zero (segments.py), so rounding noise never becomes an advantage.
"""
import functools

import jax
import numpy as np
from hypothesis import example, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from hyp import examples

from rlx.advantages import (ESTIMATORS, FILTERS, AdvantageInputs, apply_filter, compute_advantages,
                            fit_reference_stats)
from rlx.advantages.transforms import TRANSFORMS, apply_transforms

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
    # eps = 0 everywhere an estimator divides by a std.
    "grpo_eps0": dict(eps=0.0),
    "reinforce_batch_eps0": dict(scale_std=True, eps=0.0),
    "gdpo_eps0": dict(eps=0.0, batch_eps=0.0),
    "gdpo_token_eps0": dict(eps=0.0, batch_eps=0.0, batch_stats="token"),
    "mrn_eps0": dict(eps=0.0),
    "tmn_reweight_eps0": dict(num_tasks=2, eps=0.0),
    "agent_grouping_eps0": dict(num_agents=2, base_options={"eps": 0.0}),
    "pref_grpo_eps0": dict(eps=0.0),
    "f_grpo_eps0": dict(eps=0.0),
    "mapo_eps0": dict(eps=0.0),
    "per_reward_eps0": dict(normalizers=["group_z", "batch_z", "loo"], eps=0.0),
    "lightningrl_ddof1": dict(ddof=1, batch_ddof=1),
}
BUILTIN = ["grpo", "dr_grpo", "rloo", "reinforce_batch", "gdpo", "mrn", "bnpo", "tmn_reweight",
           "agent_grouping", "pref_grpo", "f_grpo", "mapo", "reference_frozen", "lightningrl",
           "per_reward", "gd2po", "dvao", "mo_grpo"]
VARIANTS = BUILTIN + [v for v in OPTIONS if v not in BUILTIN]
# Group-relative estimators whose advantage is 0 in a group where every reward is constant.
GROUP_CENTERED = ["grpo", "dr_grpo", "rloo", "mrn", "bnpo", "tmn_reweight", "agent_grouping",
                  "per_reward", "per_reward_center", "bnpo_sum", "dvao", "mo_grpo"]
# Estimators reporting per-reward parts (contrib_NK) of A.
DECOUPLED = ["gdpo", "mrn", "bnpo", "lightningrl", "per_reward", "per_reward_mixed",
             "per_reward_center", "gdpo_token", "gd2po", "dvao", "mo_grpo"]


def estimator_of(variant):
  """The registered estimator a variant runs: the longest registered prefix."""
  parts = variant.split("_")
  for n in range(len(parts), 0, -1):
    if "_".join(parts[:n]) in ESTIMATORS:
      return "_".join(parts[:n])
  raise KeyError(variant)


@functools.lru_cache(maxsize=None)
def adv_fn(variant, diagnostics=False):
  name = estimator_of(variant)
  opts = OPTIONS.get(variant, {})
  return jax.jit(lambda i: compute_advantages(name, i, G, diagnostics=diagnostics, **opts))


@functools.lru_cache(maxsize=None)
def raw_fn(variant):
  """The registered estimator itself (returns its contrib_NK)."""
  fn = ESTIMATORS.get(estimator_of(variant))
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
# Found by CI (lightningrl): z-scores of rewards 0 and 1 cancel exactly in the
# reals; in float32 the ~1e-7 remainder was divided by its own batch std.
_CANCEL_R = np.full((N, K), -1.875, np.float32)
_CANCEL_R[1] = [-2.0, -1.0, -1.875]
CANCELLING = dict(CONSTANT, rewards=_CANCEL_R, valid=(np.arange(N) >= 1) & (np.arange(N) <= 3),
                  groups=np.zeros(N, np.int32))
# Rewards equal up to float rounding (0.1 + 0.2 vs 0.3 + 0 in float32).
_ROUND_R = np.zeros((N, K), np.float32)
_ROUND_R[::2, :2] = [0.1, 0.2]
_ROUND_R[1::2, 0] = np.float32(0.3)
ROUNDING = dict(CONSTANT, rewards=_ROUND_R, groups=np.arange(N, dtype=np.int32) % G)


@settings(max_examples=examples(300))
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


REVERSED = list(range(N))[::-1]
# Found by the stress profile (gdpo): rewards 0 and 1 trade off exactly, so the
# summed z-scores differ only through eps and GDPO's batch step amplifies that.
_EPS_R = np.full((N, K), -1.625, np.float32)
_EPS_R[0, :2] = [-2.0, -0.25]
EPS_SPREAD = dict(CONSTANT, rewards=_EPS_R, groups=np.zeros(N, np.int32),
                  valid=np.isin(np.arange(N), [0, 3, 4, 8, 9, 10, 11]))


@settings(max_examples=examples(150))
@given(batches(), st.permutations(range(N)))
@example(CANCELLING, REVERSED)
@example(ROUNDING, REVERSED)
@example(ROUNDING, [1, 0] + list(range(2, N)))
@example(EPS_SPREAD, REVERSED)
@example(EPS_SPREAD, [4, 1, 2, 3, 0] + list(range(5, N)))
def test_permuting_rows_permutes_advantages(b, perm):
  perm = np.asarray(perm)
  base, permuted = make_inputs(b), make_inputs(b, perm)
  for variant in VARIANTS:
    a = np.asarray(adv_fn(variant)(base)[0], np.float64)
    ap = np.asarray(adv_fn(variant)(permuted)[0], np.float64)
    diff, tol = np.abs(ap - a[perm]), 1e-5 * (1 + np.abs(a[perm]))
    if (diff <= tol).all():
      continue
    # Some inputs are ill-conditioned (GDPO's batch step on a spread that only
    # eps made): there row order may move A by float32's own error on this
    # input, measured against float64, and that error must be small.
    a64 = advantages64(variant, b)
    err = np.maximum(np.abs(a - a64)[perm], np.abs(ap - a64[perm]))
    np.testing.assert_allclose(a, a64, rtol=1e-3, atol=1e-3, err_msg=f"{variant} (float32 vs 64)")
    np.testing.assert_allclose(ap, a64[perm], rtol=1e-3, atol=1e-3, err_msg=f"{variant} (permuted)")
    np.testing.assert_array_less(diff, tol + 2 * err + 1e-12, err_msg=variant)


def advantages64(variant, b):
  """The variant's advantages computed in float64 (the rounding-free reference)."""
  with jax.enable_x64(True):
    b64 = {key: (v.astype(np.float64) if v.dtype == np.float32 else v) for key, v in b.items()}
    opts = dict(OPTIONS.get(variant, {}))
    if "stats" in opts:
      opts["stats"] = jax.tree.map(lambda x: np.asarray(x, np.float64), opts["stats"])
    return np.asarray(compute_advantages(estimator_of(variant), make_inputs(b64), G,
                                         diagnostics=False, **opts)[0], np.float64)


@example(CANCELLING)
@example(ROUNDING)
@settings(max_examples=examples(100))
@given(batches())
def test_rewards_equal_up_to_rounding_give_zero(b):
  """Rows whose rewards differ by float rounding only (in every reward) get
  advantage 0 from every estimator, with any eps."""
  b = dict(b)
  r = b["rewards"].copy()
  # Reward k of every row in group 0 becomes c or c + one ulp (different per row).
  members = b["groups"] == 0
  c = np.float32(0.3)
  ulp = np.spacing(c)
  r[members] = c + ulp * (np.arange(N)[members, None] % 2)
  b["rewards"] = r
  b["turns"] = np.where(members[:, None], c, b["turns"])
  inputs = make_inputs(b)
  big = members & b["valid"] & (np.bincount(b["groups"][b["valid"]], minlength=G)[b["groups"]] > 1)
  for variant in VARIANTS:
    name = estimator_of(variant)
    if name in ("reinforce_batch", "gdpo", "gd2po", "lightningrl", "mapo", "reference_frozen",
                "pref_grpo") or variant in ("per_reward_mixed", "per_reward_eps0"):
      continue   # batch- or reference-relative, or not a function of the rewards
    a = np.asarray(adv_fn(variant)(inputs)[0])
    rows = big if name == "tmn_reweight" else members & b["valid"]   # TMN: G=1 has mean 0
    np.testing.assert_array_equal(a[rows], 0, err_msg=variant)


@settings(max_examples=examples(300))
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


@settings(max_examples=examples(300))
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


@settings(max_examples=examples(300))
@given(batches(elements=unit_grid, k=1))
def test_bnpo_with_a_b_one_is_reinforce_with_group_baseline(b):
  inputs = make_inputs(b)
  a_bnpo = np.asarray(single_reward_fn("bnpo", fixed_ab=(1.0, 1.0))(inputs))
  a_base = np.asarray(single_reward_fn("dr_grpo")(inputs))
  np.testing.assert_allclose(a_bnpo, a_base, atol=1e-6)


# ----------------------------------------------------------------------------
# Filters and reward transforms are row-order equivariant too.

FILTER_OPTIONS = {"dapo": {}, "dapo_per_reward": {}, "lightningrl": dict(accuracy=0, speed=1)}
TRANSFORM_SPECS = {
    "conditioned": dict(target=1, condition=0, threshold=0.0),
    "overlong_penalty": dict(max_length=16, cache_length=4),
    "log_sigmoid": {},
    "calibrate": dict(mode="bon"),
    "ensemble": dict(columns=[0, 1], method="mean_minus_std"),
    "difficulty_scale": {},
    "deconfound": {},
    "cmo_weights": {},
}


def with_extras(b, perm=None):
  inputs = make_inputs(b, perm)
  rng = np.random.default_rng(0)       # the same extras for both row orders
  extras = {"reference_levels_GK": rng.normal(size=(G, K)).astype(np.float32),
            "reference_rewards_GMK": np.asarray(rng.choice(GRID, size=(G, 5, K)), np.float32),
            "difficulty_scale_G": rng.uniform(0.5, 2, size=G).astype(np.float32)}
  feats = np.asarray(rng.choice(GRID, size=(N, 2)), np.float32)
  extras["confounders_NF"] = feats if perm is None else feats[perm]
  return inputs.replace(extras=extras)


@functools.lru_cache(maxsize=None)
def filter_fn(name):
  return jax.jit(lambda i: apply_filter(name, i, G, **FILTER_OPTIONS[name]))


@functools.lru_cache(maxsize=None)
def transform_fn(name):
  return jax.jit(lambda i: apply_transforms(i, [dict(name=name, **TRANSFORM_SPECS[name])]))


def test_every_filter_and_transform_is_covered():
  assert set(FILTER_OPTIONS) == set(FILTERS.names())
  assert set(TRANSFORM_SPECS) == set(TRANSFORMS.names())


@settings(max_examples=examples(60))
@given(batches(), st.permutations(range(N)))
@example(CANCELLING, REVERSED)
@example(ROUNDING, REVERSED)
def test_filters_and_transforms_permute_with_rows(b, perm):
  perm = np.asarray(perm)
  for name in FILTER_OPTIONS:
    keep, kept = filter_fn(name)(make_inputs(b))
    keep_p, kept_p = filter_fn(name)(make_inputs(b, perm))
    np.testing.assert_array_equal(np.asarray(keep_p), np.asarray(keep)[perm], err_msg=name)
    assert int(kept) == int(kept_p), name
  for name in TRANSFORM_SPECS:
    out, out_p = transform_fn(name)(with_extras(b)), transform_fn(name)(with_extras(b, perm))
    r, r_p = np.asarray(out.rewards_NK)[perm], np.asarray(out_p.rewards_NK)
    # Rounding relative to each reward's largest value (deconfound's residuals
    # of a least-squares fit are small differences of large values).
    scale = 1 + np.nanmax(np.abs(np.concatenate([r, r_p])), axis=0, initial=0)
    np.testing.assert_array_equal(np.isnan(r_p), np.isnan(r), err_msg=name)
    np.testing.assert_array_less(np.nan_to_num(np.abs(r_p - r)),
                                 np.broadcast_to(1e-5 * scale + 1e-12, r.shape),
                                 err_msg=name)
    np.testing.assert_allclose(np.asarray(out_p.weights_K), np.asarray(out.weights_K),
                               rtol=1e-5, atol=1e-5, err_msg=name)
