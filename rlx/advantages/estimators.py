"""Advantage estimators (group reward normalization), registered by name.

This file holds the helpers every estimator shares and the group z-score
family: grpo, dr_grpo, rloo, reinforce_batch, gdpo, mrn, per_reward.
variants.py holds the rest (bnpo, tmn_reweight, agent_grouping, pref_grpo,
f_grpo, mapo, reference_frozen, lightningrl).

Each estimator is `fn(inputs, *, num_groups, **options) -> (A, diagnostics)`,
jittable, with no Python loops over groups. Formulas, defaults and sources are
those of docs/methods.md section 1. Conventions shared by all estimators:

* A missing reward (NaN) and an invalid row are masked out of every statistic.
* Estimators that sum rewards first (grpo, dr_grpo, rloo, reinforce_batch,
  tmn_reweight, bnpo with decompose=False) take `missing`:
  "sum_available" (default; s = sum of the weighted rewards present, as TRL's
  nansum; a row with no reward is left out) or "drop_row" (a row with any
  missing reward is left out).
* A left-out row, a group of one member and a zero-variance group give a
  finite advantage: 0 where the reward is constant in the group (TMN keeps its
  own G=1 rule: mean 0, variance 1).
* A group or batch std at the rounding level of what it normalizes counts as
  zero (segments.py, "Degenerate statistics"): values that differ by float
  rounding only get advantage 0 whatever eps, and the row order changes no
  advantage beyond rounding. Sums carry the magnitude of their terms
  (`combined_magnitude`, `group_zscore_with_magnitude`) into later statistics.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp

from rlx.advantages import segments as seg
from rlx.advantages.inputs import AdvantageInputs
from rlx.advantages.registry import ESTIMATORS, check_choice

Array = jax.Array
Diagnostics = dict[str, Any]

MISSING_SUM = ("sum_available", "drop_row")


# ----------------------------------------------------------------------------
# Shared pieces.


def observed(inputs: AdvantageInputs) -> Array:
  """bool [N, K]: reward present and row valid."""
  return inputs.valid_N[:, None] & ~jnp.isnan(inputs.rewards_NK)


def combined_reward(inputs: AdvantageInputs, missing: str, who: str
                    ) -> tuple[Array, Array, Array]:
  """s_N = sum_k w_k r_k over present rewards; returns (s_N, mask_N, x_NK).

  x_NK is the reward matrix with missing entries set to 0, so that
  s = sum_k w_k x_k exactly. Estimators of the form A_i = c_i (s_i - mean_g s)
  report c as diagnostics["sum_scale_N"] (and their row mask as
  "sum_mask_N"), from which `compute_advantages` derives each reward's share
  of |A| (section 7) without an extra pass over the batch.
  """
  check_choice(missing, MISSING_SUM, "missing", who)
  obs = observed(inputs)
  x = jnp.where(obs, inputs.rewards_NK, 0)
  s = x @ inputs.weights_K
  mask = obs.any(-1) if missing == "sum_available" else obs.all(-1) & inputs.valid_N
  return s, mask, x


def combined_magnitude(x_NK: Array, inputs: AdvantageInputs) -> Array:
  """sum_k |w_k x_k|: the size of the terms of s (its rounding level's scale)."""
  return jnp.abs(x_NK) @ jnp.abs(inputs.weights_K)


def as_per_reward(value: Any, inputs: AdvantageInputs, option: str, who: str) -> Array:
  """A scalar, a length-K sequence or a {reward name: value} mapping -> [K]."""
  k = inputs.num_rewards
  if isinstance(value, Mapping):
    out = [None] * k
    for key, v in value.items():
      out[inputs.reward_index(key)] = v
    if any(v is None for v in out):
      missing = [inputs.reward_names[i] for i, v in enumerate(out) if v is None]
      raise ValueError(f"{who}: option {option} has no value for reward(s) {missing}.")
    value = out
  arr = jnp.asarray(value, inputs.rewards_NK.dtype)
  if arr.ndim == 0:
    return jnp.full((k,), arr)
  if arr.shape != (k,):
    raise ValueError(f"{who}: option {option} needs a scalar or {k} values, got shape {arr.shape}.")
  return arr


# ----------------------------------------------------------------------------
# Summed-reward estimators.


@ESTIMATORS.register("grpo")
def grpo(inputs: AdvantageInputs, *, num_groups: int, eps: float = 1e-4,
         ddof: int = 1, scale_std: bool = True, missing: str = "sum_available"
         ) -> tuple[Array, Diagnostics]:
  """GRPO (DeepSeekMath): s = sum_k w_k r_k; A = (s - mean_g s) / (std_g s + eps).

  eps 1e-4 is TRL's (verl uses 1e-6); scale_std=False gives Dr. GRPO.
  """
  s, mask, x = combined_reward(inputs, missing, "grpo")
  m = seg.group_moments(s, mask, inputs.group_ids_N, num_groups, ddof,
                        combined_magnitude(x, inputs))
  if scale_std:
    scale = seg.safe_divide(jnp.ones_like(s), m.std + eps, mask & (m.count > ddof))
  else:
    scale = mask.astype(s.dtype)
  return m.centered * scale, {"sum_scale_N": scale, "sum_mask_N": mask}


@ESTIMATORS.register("dr_grpo")
def dr_grpo(inputs: AdvantageInputs, *, num_groups: int, missing: str = "sum_available"
            ) -> tuple[Array, Diagnostics]:
  """Dr. GRPO: A = s - mean_g s (no std scaling)."""
  return grpo(inputs, num_groups=num_groups, scale_std=False, missing=missing)


@ESTIMATORS.register("rloo")
def rloo(inputs: AdvantageInputs, *, num_groups: int, missing: str = "sum_available"
         ) -> tuple[Array, Diagnostics]:
  """RLOO: A_i = s_i - mean_{j in g, j != i} s_j = n/(n-1) (s_i - mean_g s); 0 if n = 1."""
  s, mask, x = combined_reward(inputs, missing, "rloo")
  m = seg.group_moments(s, mask, inputs.group_ids_N, num_groups, ddof=1,
                        magnitude=combined_magnitude(x, inputs))
  scale = seg.safe_divide(m.count, m.count - 1, mask & (m.count > 1))
  return m.centered * scale, {"sum_scale_N": scale, "sum_mask_N": mask}


@ESTIMATORS.register("reinforce_batch")
def reinforce_batch(inputs: AdvantageInputs, *, num_groups: int, scale_std: bool = False,
                    eps: float = 1e-4, ddof: int = 1, missing: str = "sum_available"
                    ) -> tuple[Array, Diagnostics]:
  """REINFORCE with a batch baseline: A = s - mean_batch s (optionally / (std_batch + eps))."""
  del num_groups
  s, mask, x = combined_reward(inputs, missing, "reinforce_batch")
  mean, var, total = seg.batch_moments(s, mask, ddof, magnitude=combined_magnitude(x, inputs))
  if scale_std:
    scale = seg.safe_divide(jnp.ones_like(s), jnp.sqrt(var) + eps, mask & (total > ddof))
  else:
    scale = mask.astype(s.dtype)

  def contrib(rows):  # Per-reward parts on the diagnostic rows (batch means taken there).
    m = (mask[rows] & (var > 0))[:, None].astype(x.dtype)
    xr = x[rows]
    xmean = (xr * m).sum(0) / jnp.maximum(m.sum(), 1)
    return (xr - xmean) * m * inputs.weights_K * scale[rows][:, None]

  return seg.batch_center(s, mask, mean, var) * scale, {"contrib_NK": contrib}


# ----------------------------------------------------------------------------
# Decoupled (per-reward) normalization: GDPO, MRN.

MISSING_DECOUPLED = ("leave_out", "zero_fill")


def _per_reward_group_z(inputs: AdvantageInputs, num_groups: int, eps: float, ddof: int,
                        missing: str, who: str) -> tuple[Array, Array, Array]:
  """Group z-score of every reward: (z_NK, row mask of rows that carry a
  signal, magnitude_N of the weighted sum z @ w)."""
  check_choice(missing, MISSING_DECOUPLED, "missing", who)
  if missing == "leave_out":
    mask = observed(inputs)
    rows = mask.any(-1)
  else:  # TRL port: nan_to_num before the group statistics.
    mask = jnp.broadcast_to(inputs.valid_N[:, None], inputs.rewards_NK.shape)
    rows = inputs.valid_N
  x = jnp.where(jnp.isnan(inputs.rewards_NK), 0, inputs.rewards_NK)
  z, mag_NK = seg.group_zscore_with_magnitude(x, mask, inputs.group_ids_N, num_groups,
                                              eps=eps, ddof=ddof)
  return z, rows, mag_NK @ jnp.abs(inputs.weights_K)


@ESTIMATORS.register("gdpo")
def gdpo(inputs: AdvantageInputs, *, num_groups: int, eps: float = 1e-4, ddof: int = 1,
         missing: str = "leave_out", batch_norm: bool = True,
         batch_stats: str = "sequence", batch_eps: float | None = None
         ) -> tuple[Array, Diagnostics]:
  """GDPO: per-reward group z-scores, weighted sum, then batch normalization.

  A_k = (r_k - mean_g r_k) / (std_g r_k + eps); A = sum_k w_k A_k;
  batch_stats="sequence" (TRL port): A <- (A - mean) / (std + batch_eps),
  batch_eps default 1e-4, std with ddof;
  batch_stats="token" (verl port): mean and variance over response tokens
  (each sequence weighted by lengths_N, Bessel-corrected by the token count),
  A <- (A - mean) * rsqrt(var + batch_eps), batch_eps default 1e-8.
  TRL port: eps=1e-4, missing="zero_fill"; verl port: eps=1e-6,
  batch_stats="token", unit weights. missing="leave_out" (default) masks
  missing rewards out of the statistics (TRL 1.16 normalize_then_sum).
  """
  check_choice(batch_stats, ("sequence", "token"), "batch_stats", "gdpo")
  z, rows, mag = _per_reward_group_z(inputs, num_groups, eps, ddof, missing, "gdpo")
  terms = z * inputs.weights_K
  pre = z @ inputs.weights_K
  diags: Diagnostics = {}
  if not batch_norm:
    scale = rows.astype(pre.dtype)
    adv = pre * scale
  elif batch_stats == "sequence":
    beps = 1e-4 if batch_eps is None else batch_eps
    mean, var, total = seg.batch_moments(pre, rows, ddof, magnitude=mag)
    scale = seg.safe_divide(jnp.ones_like(pre), jnp.sqrt(var) + beps,
                            rows & (total > ddof) & (var > 0))
    adv = seg.batch_center(pre, rows, mean, var) * scale
  else:
    beps = 1e-8 if batch_eps is None else batch_eps
    lengths = inputs.require("lengths_N", "gdpo with batch_stats='token'").astype(pre.dtype)
    mean, var, total = seg.batch_moments(pre, rows, 1, weights=lengths, magnitude=mag)
    scale = jnp.where(rows & (total > 1) & (var > 0), jax.lax.rsqrt(var + beps), 0)
    adv = seg.batch_center(pre, rows, mean, var) * scale
  if batch_norm:
    diags["batch_mean"] = mean
    diags["batch_std"] = jnp.sqrt(var)
  diags["contrib_NK"] = terms * scale[:, None]
  return adv, diags


@ESTIMATORS.register("mrn")
def mrn(inputs: AdvantageInputs, *, num_groups: int, eps: float = 1e-4, ddof: int = 1,
        missing: str = "leave_out") -> tuple[Array, Diagnostics]:
  """MRN (ReFine-RFT): A = sum_k w_k (r_k - mean_g r_k) / (std_g r_k + eps) (GDPO without the batch step)."""
  return gdpo(inputs, num_groups=num_groups, eps=eps, ddof=ddof, missing=missing,
              batch_norm=False)


# ----------------------------------------------------------------------------
# Per-reward normalizer choice.

NORMALIZERS = ("group_z", "group_center", "batch_z", "rank", "loo", "none")


def group_rank_quantile(x_N: Array, mask_N: Array, group_ids_N: Array, num_groups: int) -> Array:
  """Mid-rank quantile inside each group mapped to [-1, 1]:
  2 (#{j: x_j < x_i} + 0.5 #{j != i: x_j = x_i}) / (n - 1) - 1; 0 when n = 1.
  Sorts the batch once (O(N log N))."""
  n = x_N.shape[0]
  key_g = jnp.where(mask_N, group_ids_N, num_groups)
  order = jnp.lexsort((jnp.where(mask_N, x_N, 0), key_g))
  xs, gs = jnp.where(mask_N, x_N, 0)[order], key_g[order]
  pos = jnp.arange(n)
  new_group = jnp.concatenate([jnp.ones((1,), bool), gs[1:] != gs[:-1]])
  new_run = new_group | jnp.concatenate([jnp.ones((1,), bool), xs[1:] != xs[:-1]])
  group_run = jnp.cumsum(new_group) - 1
  value_run = jnp.cumsum(new_run) - 1
  group_start = jax.ops.segment_min(pos, group_run, n)[group_run]
  group_size = jax.ops.segment_sum(jnp.ones_like(pos), group_run, n)[group_run]
  run_start = jax.ops.segment_min(pos, value_run, n)[value_run]
  run_len = jax.ops.segment_sum(jnp.ones_like(pos), value_run, n)[value_run]
  below = (run_start - group_start).astype(x_N.dtype)
  ties = (run_len - 1).astype(x_N.dtype)
  q = seg.safe_divide(below + 0.5 * ties, (group_size - 1).astype(x_N.dtype))
  q_sorted = jnp.where(group_size > 1, 2 * q - 1, 0)
  out = jnp.zeros_like(x_N).at[order].set(q_sorted)
  return jnp.where(mask_N, out, 0)


@ESTIMATORS.register("per_reward")
def per_reward(inputs: AdvantageInputs, *, num_groups: int,
               normalizers: str | Sequence[str] | Mapping[str, str] = "group_z",
               eps: float = 1e-4, ddof: int = 1) -> tuple[Array, Diagnostics]:
  """Each reward normalized by its own normalizer, then A = sum_k w_k n_k(r_k).

  normalizers: one name for all rewards, a list of K names or {reward: name};
  names: group_z ((r - mean_g)/(std_g + eps)), group_center (r - mean_g),
  batch_z ((r - mean)/(std + eps) over the batch), rank (mid-rank quantile in
  the group, in [-1, 1]; sorts), loo (r - mean of the other members), none.
  """
  k = inputs.num_rewards
  if isinstance(normalizers, str):
    names = [normalizers] * k
  elif isinstance(normalizers, Mapping):
    names = ["group_z"] * k
    for key, v in normalizers.items():
      names[inputs.reward_index(key)] = v
  else:
    names = list(normalizers)
    if len(names) != k:
      raise ValueError(f"per_reward: {len(names)} normalizers for {k} rewards.")
  for nm in names:
    check_choice(nm, NORMALIZERS, "normalizers", "per_reward")
  obs = observed(inputs)
  x = jnp.where(obs, inputs.rewards_NK, 0)
  gid = inputs.group_ids_N

  def normalize(nm: str, xs: Array, ms: Array) -> Array:
    if nm == "group_z":
      return seg.group_zscore(xs, ms, gid, num_groups, eps=eps, ddof=ddof)
    if nm == "group_center":
      return seg.group_moments(xs, ms, gid, num_groups, ddof).centered
    if nm == "loo":
      m = seg.group_moments(xs, ms, gid, num_groups, ddof=1)
      return m.centered * seg.safe_divide(m.count, m.count - 1, ms & (m.count > 1))
    if nm == "batch_z":
      return jax.vmap(lambda c, mm: seg.batch_zscore(c, mm, eps=eps, ddof=ddof),
                      in_axes=1, out_axes=1)(xs, ms)
    if nm == "rank":
      return jax.vmap(lambda c, mm: group_rank_quantile(c, mm, gid, num_groups),
                      in_axes=1, out_axes=1)(xs, ms)
    return xs

  by_kind: dict[str, list[int]] = {}
  for i, nm in enumerate(names):
    by_kind.setdefault(nm, []).append(i)
  if len(by_kind) == 1:
    z = normalize(names[0], x, obs)
    return z @ inputs.weights_K, {"contrib_NK": z * inputs.weights_K}
  cols = [None] * k
  for nm, idx in by_kind.items():
    ia = jnp.asarray(idx)
    out = normalize(nm, x[:, ia], obs[:, ia])
    for j, i in enumerate(idx):
      cols[i] = out[:, j]
  terms = jnp.stack(cols, -1) * inputs.weights_K
  return terms.sum(-1), {"contrib_NK": terms}
