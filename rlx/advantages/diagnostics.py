"""Section-7 diagnostics: constant-group shares, correlations, advantage resolution.

All functions are jittable and return flat dicts of scalars keyed for logging:

  reward/{name}/constant_group_frac, reward/{name}/abs_adv_share, reward_corr/{a}/{b},
  adv/mean, adv/std, adv/abs_mean, adv/min, adv/max, adv/zero_frac,
  adv/distinct_per_group, adv/distinct_group_vectors,
  adv/distinct_group_vector_frac, adv/resolution_groups.

The per-reward keys share the trainer's `reward/{name}/...` family (its batch
mean and std, ddof 0, and missing/raised counts are computed on the host by
rlx/train/rl.py, over all rows).
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from rlx.advantages import segments as seg
from rlx.advantages.inputs import AdvantageInputs

Array = jax.Array


def reward_correlation_matrix(rewards_NK: Array, mask_NK: Array) -> Array:
  """[K, K] Pearson correlation over the rows where both rewards are present
  (1 on the diagonal, 0 where undefined, also for a reward whose spread is at
  the rounding level of its values: segments.rounding_floor)."""
  obsf = mask_NK.astype(rewards_NK.dtype)
  n_kl = obsf.T @ obsf
  raw = jnp.where(mask_NK, rewards_NK, 0)
  big_K = jnp.abs(raw).max(0, initial=0)
  low_K = jnp.where(mask_NK, rewards_NK, jnp.inf).min(0, initial=jnp.inf)
  x = jnp.where(mask_NK, raw - jnp.where(jnp.isfinite(low_K), low_K, 0), 0)  # shifted: less cancellation
  sx = x.T @ obsf                 # [k, l]: sum of x_k over rows with k and l present
  sxy = x.T @ x
  sxx = (x * x).T @ obsf
  nn = jnp.maximum(n_kl, 1)
  cov = sxy - sx * sx.T / nn
  vx = jnp.maximum(sxx - sx * sx / nn, 0)
  floor = seg.rounding_floor(big_K, x.dtype)[:, None]
  vx = jnp.where(vx > nn * floor * floor, vx, 0)
  den = jnp.sqrt(vx * vx.T)
  corr = jnp.where((den > 0) & (n_kl > 1), cov / jnp.where(den > 0, den, 1), 0)
  k = rewards_NK.shape[1]
  return jnp.where(jnp.eye(k, dtype=bool), 1.0, jnp.clip(corr, -1, 1))


def group_reward_stats(rewards_NK: Array, mask_NK: Array, group_ids_N: Array,
                       num_groups: int, reward_names: tuple[str, ...]) -> dict[str, Array]:
  """Share of groups where each reward is constant, and reward correlations."""
  hi = seg.group_max(rewards_NK, mask_NK, group_ids_N, num_groups)
  lo = seg.group_min(rewards_NK, mask_NK, group_ids_N, num_groups)
  present = jax.ops.segment_sum(mask_NK.astype(jnp.int32), group_ids_N, num_groups) > 0
  const_K = ((hi <= lo) & present).sum(0) / jnp.maximum(present.sum(0), 1)
  corr = reward_correlation_matrix(rewards_NK, mask_NK)
  out = {f"reward/{name}/constant_group_frac": const_K[k] for k, name in enumerate(reward_names)}
  for a in range(len(reward_names)):
    for b in range(a + 1, len(reward_names)):
      out[f"reward_corr/{reward_names[a]}/{reward_names[b]}"] = corr[a, b]
  return out


def sample_groups(group_ids_N: Array, valid_N: Array, num_groups: int,
                  max_rows: int | None) -> tuple[slice, Array, int]:
  """Rows used by the group-level diagnostics: all rows if N <= max_rows (or
  max_rows is None), else the first max_rows rows (a static slice, so the
  cost does not grow with N), keeping only groups whose valid members all lie
  in the slice. Returns (row slice, row mask [M], number of group ids)."""
  n = group_ids_N.shape[0]
  if max_rows is None or n <= max_rows:
    return slice(None), valid_N, num_groups
  rows = slice(0, max_rows)
  gid = group_ids_N[rows]
  v = valid_N[rows]
  full = jax.ops.segment_sum(valid_N.astype(jnp.int32), group_ids_N, num_groups)
  got = jax.ops.segment_sum(v.astype(jnp.int32), gid, num_groups)
  return rows, v & (got == full)[gid], num_groups


def _fmix32(h: Array) -> Array:
  """MurmurHash3 finalizer on uint32."""
  h = h ^ (h >> 16)
  h = h * jnp.uint32(0x85EBCA6B)
  h = h ^ (h >> 13)
  h = h * jnp.uint32(0xC2B2AE35)
  return h ^ (h >> 16)


def _resolution(adv_M: Array, gid_M: Array, mask_M: Array, tol: float) -> tuple[Array, Array, Array]:
  """(distinct values per group averaged, distinct sorted group vectors, groups)."""
  m = adv_M.shape[0]
  big = jnp.iinfo(jnp.int32).max
  q = jnp.round(jnp.where(mask_M, adv_M, 0) / tol)
  key_g = jnp.where(mask_M, gid_M, big)
  order = jnp.lexsort((q, key_g))
  qs, gs, ms = q[order], key_g[order], mask_M[order]
  first = jnp.ones((1,), bool)
  new_group = jnp.concatenate([first, gs[1:] != gs[:-1]]) & ms
  new_val = (jnp.concatenate([first, qs[1:] != qs[:-1]]) | new_group) & ms
  n_groups = new_group.sum()
  distinct_per_group = new_val.sum() / jnp.maximum(n_groups, 1)
  # Hash of each group's sorted vector: sum over members of mix(value, rank).
  run = jnp.cumsum(new_group) - 1
  run = jnp.where(ms, run, m)  # padding -> dropped segment
  pos = jnp.arange(m)
  start = jax.ops.segment_min(pos, run, m + 1)[run]
  rank = (pos - start).astype(jnp.uint32)
  qi = jnp.clip(qs, -2.0**31 + 1, 2.0**31 - 1).astype(jnp.int32).astype(jnp.uint32)
  h = _fmix32(qi * jnp.uint32(0x9E3779B1) + _fmix32(rank + jnp.uint32(0x7F4A7C15)))
  hash_G = jax.ops.segment_sum(jnp.where(ms, h, 0), run, m + 1)[:m]
  size_G = jax.ops.segment_sum(ms.astype(jnp.uint32), run, m + 1)[:m]
  hash_G = _fmix32(hash_G ^ _fmix32(size_G))
  is_group = jnp.arange(m) < n_groups
  hs = jnp.sort(jnp.where(is_group, hash_G, jnp.uint32(0xFFFFFFFF)))
  distinct_vecs = (jnp.concatenate([first, hs[1:] != hs[:-1]]) & is_group).sum()
  return distinct_per_group, distinct_vecs, n_groups


def advantage_stats(adv: Array, valid_N: Array, tol: float = 1e-6) -> dict[str, Array]:
  """Mean, std, |A| mean, min, max and share of (near-)zero advantages over
  valid rows (all 0 when there is none)."""
  mask = jnp.broadcast_to(valid_N.reshape(valid_N.shape + (1,) * (adv.ndim - 1)), adv.shape)
  n = jnp.maximum(mask.sum(), 1)
  a = jnp.where(mask, adv, 0)
  mean = a.sum() / n
  var = jnp.where(mask, (adv - mean) ** 2, 0).sum() / jnp.maximum(n - 1, 1)
  some = mask.any()
  return {"adv/mean": mean, "adv/std": jnp.sqrt(var), "adv/abs_mean": jnp.abs(a).sum() / n,
          "adv/min": jnp.where(some, jnp.where(mask, adv, jnp.inf).min(), 0),
          "adv/max": jnp.where(some, jnp.where(mask, adv, -jnp.inf).max(), 0),
          "adv/zero_frac": (mask & (jnp.abs(adv) <= tol)).sum() / n}


def abs_advantage_shares(contrib_NK: Array, valid_N: Array, reward_names: tuple[str, ...]
                         ) -> dict[str, Array]:
  """Each reward's share of sum_i sum_k |contribution of reward k to A_i|."""
  abs_K = jnp.where(valid_N[:, None], jnp.abs(contrib_NK), 0).sum(0)
  total = abs_K.sum()
  share = jnp.where(total > 0, abs_K / jnp.where(total > 0, total, 1), 0)
  return {f"reward/{name}/abs_adv_share": share[k] for k, name in enumerate(reward_names)}


def all_diagnostics(inputs: AdvantageInputs, num_groups: int, adv: Array,
                    contrib_NK: Any = None, max_rows: int | None = 16384,
                    sum_scale_N: Any = None, sum_mask_N: Any = None) -> dict[str, Array]:
  """Everything of section 7 that the advantage step can know.

  Advantage mean/std/min/max use the whole batch; reward statistics,
  correlations, constant-group shares, resolution and |A| shares use the
  complete groups among the first max_rows rows (`sample_groups`; the whole
  batch when N <= max_rows), which keeps their cost independent of N.

  contrib_NK: each reward's additive part of A [N, K] (or a function of row
  indices returning those rows' parts), if the estimator has one;
  sum_scale_N / sum_mask_N: for A_i = c_i (s_i - mean_g s) estimators, c and
  the row mask (the parts are then c_i w_k (r_ik - mean_g r_k)).
  """
  idx, mask, cut = sample_groups(inputs.group_ids_N, inputs.valid_N, num_groups, max_rows)
  sub = inputs.replace(
      rewards_NK=inputs.rewards_NK[idx], group_ids_N=inputs.group_ids_N[idx], valid_N=mask,
      lengths_N=None if inputs.lengths_N is None else inputs.lengths_N[idx],
      task_ids_N=None, agent_ids_N=None, phase_mask_NZT=None, turn_scores_NU=None,
      turn_ids_NT=None, pairwise_NM=None, extras={})
  obs = mask[:, None] & ~jnp.isnan(sub.rewards_NK)
  out = group_reward_stats(sub.rewards_NK, obs, sub.group_ids_N, cut, inputs.reward_names)
  if adv.ndim == 1:
    out.update(advantage_stats(adv, inputs.valid_N))
  else:  # token- or turn-level: statistics over the sampled rows
    out.update(advantage_stats(adv[idx], mask))
  if adv.ndim == 1:
    d, v, g = _resolution(adv[idx], sub.group_ids_N, mask, 1e-5)
    out.update({"adv/distinct_per_group": d, "adv/distinct_group_vectors": v,
                "adv/distinct_group_vector_frac": v / jnp.maximum(g, 1),
                "adv/resolution_groups": g})
  if contrib_NK is None and sum_scale_N is not None:
    rows = mask if sum_mask_N is None else mask & sum_mask_N[idx]
    x = jnp.where(obs, sub.rewards_NK, 0)
    centered = seg.group_moments(x, rows, sub.group_ids_N, cut, ddof=1).centered
    contrib_sub = centered * inputs.weights_K * sum_scale_N[idx][:, None]
    out.update(abs_advantage_shares(contrib_sub, rows, inputs.reward_names))
  elif contrib_NK is not None:
    sub_contrib = contrib_NK(idx) if callable(contrib_NK) else contrib_NK[idx]
    out.update(abs_advantage_shares(sub_contrib, mask, inputs.reward_names))
  return out
