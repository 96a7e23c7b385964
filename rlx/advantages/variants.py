"""Advantage estimators beyond the group z-score family, registered by name.

BNPO (Beta-normalized), TMN with difficulty reweighting, agent grouping,
Pref-GRPO, F-GRPO, MAPO, reference-frozen normalization (RFN) and LightningRL.
The conventions (missing rewards, left-out rows, zero-variance groups) and the
shared helpers are those of estimators.py; formulas are docs/methods.md section 1.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy import special

from rlx.advantages import segments as seg
from rlx.advantages.estimators import (Array, Diagnostics, as_per_reward, combined_magnitude,
                                       combined_reward, observed)
from rlx.advantages.inputs import AdvantageInputs
from rlx.advantages.registry import ESTIMATORS, check_options

# ----------------------------------------------------------------------------
# BNPO.


def beta_log_pdf(p: Array, a: Array, b: Array) -> Array:
  """log Beta(p; a, b) with 0 log 0 = 0 (so a = 1 or b = 1 is finite at the ends)."""
  return special.xlogy(a - 1, p) + special.xlog1py(b - 1, -p) - special.betaln(a, b)


def _bnpo(p: Array, mask: Array, group_ids_N: Array, num_groups: int,
          fixed_ab: Sequence[float] | None, weight_max: float, max_ab: float
          ) -> tuple[Array, Array, Array, Array]:
  """BNPO advantage of [0,1] rewards p ([N] or [N, K], one fit per column):
  (A, a, b, weight) with weight the member's clamped 1/f_Beta(p_g)."""
  m = seg.group_moments(p, mask, group_ids_N, num_groups, ddof=1)
  present = m.count_G > 0
  n_groups = present.sum(0).astype(p.dtype)
  if fixed_ab is None:
    mu = jnp.where(present, m.mean_G, 0).sum(0) / jnp.maximum(n_groups, 1)
    var = jnp.where(present, (m.mean_G - mu) ** 2, 0).sum(0) / jnp.maximum(n_groups - 1, 1)
    floor = seg.rounding_floor(jnp.where(present, m.magnitude_G, 0).max(0), p.dtype)
    var = jnp.where(var > floor * floor, var, 0)           # equal means up to rounding
    mu = jnp.where(n_groups > 1, mu, 0.0)
    var = jnp.where(n_groups > 1, var, 1.0)
    c = mu * (1 - mu) / jnp.maximum(var, 1e-12) - 1
    a = jnp.clip(1 + c * mu / 3, 1.0, max_ab)
    b = jnp.clip(1 + c * (1 - mu) / 3, 1.0, max_ab)
  else:
    a = jnp.full(p.shape[1:], fixed_ab[0], p.dtype)
    b = jnp.full(p.shape[1:], fixed_ab[1], p.dtype)
  weight_G = jnp.clip(jnp.exp(-beta_log_pdf(jnp.clip(m.mean_G, 0, 1), a, b)), 0, weight_max)
  weight_G = jnp.where(jnp.isnan(weight_G), weight_max, weight_G)
  weight = weight_G[group_ids_N]
  return m.centered * weight, a, b, weight


@ESTIMATORS.register("bnpo")
def bnpo(inputs: AdvantageInputs, *, num_groups: int, reward_min: Any = 0.0,
         reward_max: Any = 1.0, decompose: bool = True,
         fixed_ab: Sequence[float] | None = None, weight_max: float = 1e6,
         max_ab: float = 1e4, missing: str = "sum_available") -> tuple[Array, Diagnostics]:
  """BNPO: A_i = (r_i - p_g) / f_Beta(p_g; a, b), rewards mapped to [0, 1].

  Rewards are mapped by (r - reward_min) / (reward_max - reward_min) and
  clipped to [0, 1]; p_g is the group mean of the mapped reward.
  (a, b) are refit every batch by moments of the group means {p_g}:
  c = mu(1-mu)/var - 1, a = max(1, 1 + c mu/3), b = max(1, 1 + c(1-mu)/3)
  (var with ddof 1 over groups; mu = 0, var = 1 with a single group; a and b
  capped at max_ab against degenerate batches). The weight 1/f is clamped to
  [0, weight_max]. decompose=True (BNPO's advantage decomposition): one fit
  per reward, A = sum_k w_k A_k / sum_k w_k; decompose=False: one fit on
  s = sum_k w_k r_k (then reward_min/max give the range of s and `missing`
  applies). fixed_ab=(a, b) skips the fit (a=b=1: REINFORCE with a group
  baseline). reward_min/max: scalar, per-reward list or {name: value}.
  """
  group_ids = inputs.group_ids_N
  diags: Diagnostics = {}
  if decompose:
    lo = as_per_reward(reward_min, inputs, "reward_min", "bnpo")
    hi = as_per_reward(reward_max, inputs, "reward_max", "bnpo")
    obs = observed(inputs)
    p = jnp.clip((jnp.where(obs, inputs.rewards_NK, 0) - lo) / (hi - lo), 0, 1)
    adv_NK, a_K, b_K, _ = _bnpo(p, obs, group_ids, num_groups, fixed_ab, weight_max, max_ab)
    wsum = inputs.weights_K.sum()
    w = inputs.weights_K / jnp.where(wsum != 0, wsum, 1)
    for k, name in enumerate(inputs.reward_names):
      diags[f"alpha/{name}"] = a_K[k]
      diags[f"beta/{name}"] = b_K[k]
    diags["contrib_NK"] = adv_NK * w
    return adv_NK @ w, diags
  s, mask, _ = combined_reward(inputs, missing, "bnpo")
  lo = jnp.asarray(reward_min, s.dtype)
  hi = jnp.asarray(reward_max, s.dtype)
  if lo.ndim or hi.ndim:
    raise ValueError("bnpo with decompose=False needs scalar reward_min/reward_max (range of s).")
  p = jnp.clip((s - lo) / (hi - lo), 0, 1)
  adv, a, b, weight = _bnpo(p, mask, group_ids, num_groups, fixed_ab, weight_max, max_ab)
  diags["alpha"] = a
  diags["beta"] = b
  diags["sum_scale_N"] = jnp.where(mask, weight / (hi - lo), 0)
  diags["sum_mask_N"] = mask
  return adv, diags


# ----------------------------------------------------------------------------
# TMN with difficulty reweighting (GoLongRL).


@ESTIMATORS.register("tmn_reweight")
def tmn_reweight(inputs: AdvantageInputs, *, num_groups: int, num_tasks: int = 1,
                 eps: float = 1e-6, scale_by_task: bool = True, reweight: bool = True,
                 alpha: float = 0.5, gamma: float = 1.0, missing: str = "sum_available"
                 ) -> tuple[Array, Diagnostics]:
  """Task-normalized GRPO with difficulty reweighting (GoLongRL TMN).

  Per group: mu_g, var_g (ddof 1; G=1: mu=0, var=1). Per task m:
  S_m = sqrt(mean over the task's groups of var_g); A = (s - mu_g) / (S_m + eps).
  Reweighting: mbar_m = mean of mu_g over task m; mt_g = alpha mu_g +
  (1 - alpha) mbar_m (G=1: mbar_m); p_g = share of the group with s > mt_g;
  A *= exp(gamma (0.5 - p_g)) if s > mu_g else exp(gamma (p_g - 0.5)).
  Tasks come from task_ids_N (all 0 when None) with static num_tasks; a
  group's task is its members' (largest) task id. The recipe uses alpha 0.8.
  """
  s, mask, x = combined_reward(inputs, missing, "tmn_reweight")
  gid = inputs.group_ids_N
  m = seg.group_moments(s, mask, gid, num_groups, ddof=1,
                        magnitude=combined_magnitude(x, inputs))
  present = m.count_G > 0
  single_G = m.count_G == 1
  mu_G = jnp.where(single_G, 0, m.mean_G)
  var_G = jnp.where(single_G, 1, m.var_G)
  if inputs.task_ids_N is None:
    task_G = jnp.zeros((num_groups,), jnp.int32)
  else:
    task_G = jax.ops.segment_max(jnp.where(mask, inputs.task_ids_N.astype(jnp.int32), -1),
                                 gid, num_groups)
    task_G = jnp.clip(task_G, 0, num_tasks - 1)
  presentf = present.astype(s.dtype)
  n_task = jnp.maximum(jax.ops.segment_sum(presentf, task_G, num_tasks), 1)
  scale_M = jnp.sqrt(jnp.maximum(
      jax.ops.segment_sum(var_G * presentf, task_G, num_tasks) / n_task, 0))
  single_N = single_G[gid]
  centered = jnp.where(single_N, s, m.centered)
  task_N = task_G[gid]
  adv = seg.safe_divide(centered, scale_M[task_N] + eps) if scale_by_task else centered
  diags: Diagnostics = {}
  if reweight:
    mbar_M = jax.ops.segment_sum(mu_G * presentf, task_G, num_tasks) / n_task
    smooth_G = jnp.where(single_G, mbar_M[task_G], alpha * mu_G + (1 - alpha) * mbar_M[task_G])
    correct = mask & (s > smooth_G[gid])
    p_G = jax.ops.segment_sum(correct.astype(s.dtype), gid, num_groups) / jnp.maximum(m.count_G, 1)
    p_N = p_G[gid]
    w = jnp.where(centered > 0, jnp.exp(gamma * (0.5 - p_N)), jnp.exp(gamma * (p_N - 0.5)))
    adv = adv * w
    diags["mean_pass_rate"] = (p_G * presentf).sum() / jnp.maximum(presentf.sum(), 1)
  else:
    w = 1.0
  scale = seg.safe_divide(w, scale_M[task_N] + eps) if scale_by_task else w * jnp.ones_like(s)
  diags["sum_scale_N"] = jnp.where(mask, scale, 0)  # (shares treat G=1 groups as centered)
  diags["sum_mask_N"] = mask
  return jnp.where(mask, adv, 0), diags


# ----------------------------------------------------------------------------
# Dr. MAS agent grouping (any estimator).


@ESTIMATORS.register("agent_grouping")
def agent_grouping(inputs: AdvantageInputs, *, num_groups: int, num_agents: int,
                   base: str = "grpo", base_options: Mapping[str, Any] | None = None
                   ) -> tuple[Array, Diagnostics]:
  """Dr. MAS: runs estimator `base` with the group key (prompt, agent id).

  Needs agent_ids_N in [0, num_agents). Dr. MAS's GRPO uses eps 1e-6.
  """
  base_options = dict(base_options or {})
  fn = check_options(ESTIMATORS, base, base_options)
  agents = inputs.require("agent_ids_N", "agent_grouping").astype(jnp.int32)
  keyed = inputs.replace(group_ids_N=seg.combine_group_ids(inputs.group_ids_N, agents, num_agents))
  return fn(keyed, num_groups=num_groups * num_agents, **base_options)


# ----------------------------------------------------------------------------
# Pref-GRPO.


@ESTIMATORS.register("pref_grpo")
def pref_grpo(inputs: AdvantageInputs, *, num_groups: int, eps: float = 1e-8,
              ddof: int = 1, round_decimals: int | None = None
              ) -> tuple[Array, Diagnostics]:
  """Pref-GRPO: win rate from pairwise outcomes, then group z-score.

  WR_i = (sum_j [win] + 0.5 [tie]) / (number of comparisons) from
  pairwise_NM (1 win, 0.5 tie, 0 loss, NaN none); with every pair compared
  the denominator is G - 1. A = (WR - mean_g WR) / (std_g WR + eps).
  round_decimals=3 reproduces the official code's rounding of WR.
  """
  pair = inputs.require("pairwise_NM", "pref_grpo")
  has = ~jnp.isnan(pair) & inputs.valid_N[:, None]
  n_cmp = has.sum(-1)
  wr = jnp.where(has, pair, 0).sum(-1) / jnp.maximum(n_cmp, 1)
  if round_decimals is not None:
    wr = jnp.round(wr * 10.0 ** round_decimals) / 10.0 ** round_decimals
  mask = inputs.valid_N & (n_cmp > 0)
  adv = seg.group_zscore(wr, mask, inputs.group_ids_N, num_groups, eps=eps, ddof=ddof)
  return adv, {"win_rate_mean": (wr * mask).sum() / jnp.maximum(mask.sum(), 1)}


# ----------------------------------------------------------------------------
# F-GRPO (phase token masks).


def _phase_contrib(z_NP: Array, cols: list[int], inputs: AdvantageInputs) -> Array:
  """Per-reward parts of the per-sequence phase advantages (for |A| shares)."""
  out = jnp.zeros(inputs.rewards_NK.shape, z_NP.dtype)
  for p, c in enumerate(cols):
    out = out.at[:, c].add(z_NP[:, p])
  return out


@ESTIMATORS.register("f_grpo")
def f_grpo(inputs: AdvantageInputs, *, num_groups: int, eps: float = 1e-6, ddof: int = 1,
           phase_columns: Sequence[int | str] | None = None) -> tuple[Array, Diagnostics]:
  """F-GRPO: one group z-score per phase reward, applied to that phase's tokens.

  phase_columns[p] names the reward of phase p (default: reward p, needs
  K == P). A[i, t] = sum_p w_p z_p[i] phase_mask[i, p, t]; returns [N, T].
  """
  mask_NPT = inputs.require("phase_mask_NZT", "f_grpo")
  num_phases = mask_NPT.shape[1]
  if phase_columns is None:
    if inputs.num_rewards != num_phases:
      raise ValueError(f"f_grpo: {num_phases} phases but {inputs.num_rewards} rewards; "
                       "pass phase_columns.")
    cols = list(range(num_phases))
  else:
    cols = [inputs.reward_index(c) for c in phase_columns]
    if len(cols) != num_phases:
      raise ValueError(f"f_grpo: phase_columns has {len(cols)} entries for {num_phases} phases.")
  cols_arr = jnp.asarray(cols)
  r = inputs.rewards_NK[:, cols_arr]
  obs = observed(inputs)[:, cols_arr]
  z = seg.group_zscore(jnp.where(obs, r, 0), obs, inputs.group_ids_N, num_groups,
                       eps=eps, ddof=ddof) * inputs.weights_K[cols_arr]
  adv = sum(jnp.where(mask_NPT[:, p, :], z[:, p:p + 1], 0) for p in range(num_phases))
  return jnp.where(inputs.valid_N[:, None], adv, 0), {"contrib_NK": _phase_contrib(z, cols, inputs)}


# ----------------------------------------------------------------------------
# MAPO (turn-level + batch mixing).


@ESTIMATORS.register("mapo")
def mapo(inputs: AdvantageInputs, *, num_groups: int, lam: float = 0.5, gamma: float = 1.0,
         eps: float = 1e-6, ddof: int = 1) -> tuple[Array, Diagnostics]:
  """MAPO: A = lam z_turn(R) + (1 - lam) z_batch(R), R the discounted turn returns.

  R[i, t] = sum_{k >= t} gamma^(k - t) s[i, k] over the present turns of
  turn_scores_NU (NaN = no turn); z_turn normalizes over all samples at the
  same turn index, z_batch over all turns of the batch. Returns [N, U], or
  [N, T] when turn_ids_NT maps tokens to turns (-1: no turn, advantage 0).
  """
  del num_groups
  scores = inputs.require("turn_scores_NU", "mapo")
  has = ~jnp.isnan(scores) & inputs.valid_N[:, None]
  s = jnp.where(has, scores, 0)
  u = scores.shape[1]
  t_idx = jnp.arange(u)
  power = t_idx[None, :] - t_idx[:, None]  # [t, k] = k - t
  discount_UU = jnp.where(power >= 0, gamma ** jnp.maximum(power, 0).astype(s.dtype), 0)
  ret = s @ discount_UU.T
  mag = jnp.abs(s) @ jnp.abs(discount_UU.T)
  z_turn = jax.vmap(lambda r, h, g: seg.batch_zscore(r, h, eps=eps, ddof=ddof, magnitude=g),
                    in_axes=1, out_axes=1)(ret, has, mag)
  z_batch = seg.batch_zscore(ret, has, eps=eps, ddof=ddof, magnitude=mag)
  adv_NU = jnp.where(has, lam * z_turn + (1 - lam) * z_batch, 0)
  if inputs.turn_ids_NT is None:
    return adv_NU, {}
  tid = inputs.turn_ids_NT.astype(jnp.int32)
  adv_NT = jnp.take_along_axis(adv_NU, jnp.clip(tid, 0, u - 1), axis=1)
  return jnp.where(tid >= 0, adv_NT, 0), {}


# ----------------------------------------------------------------------------
# Reference-frozen normalization (RFN).


@dataclasses.dataclass(frozen=True)
class ReferenceStats:
  """Per-reward mean/std fitted once on reference-policy rollouts (a pytree of
  small arrays; `to_dict`/`from_dict` give numpy arrays for checkpoints)."""
  mean_K: Any
  std_K: Any
  count_K: Any

  def to_dict(self) -> dict[str, Any]:
    return {"mean_K": np.asarray(self.mean_K), "std_K": np.asarray(self.std_K),
            "count_K": np.asarray(self.count_K)}

  @classmethod
  def from_dict(cls, d: Mapping[str, Any]) -> "ReferenceStats":
    return cls(jnp.asarray(d["mean_K"]), jnp.asarray(d["std_K"]), jnp.asarray(d["count_K"]))


jax.tree_util.register_dataclass(ReferenceStats, data_fields=["mean_K", "std_K", "count_K"],
                                 meta_fields=[])


def fit_reference_stats(rewards_NK: Any, valid_N: Any = None, ddof: int = 1) -> ReferenceStats:
  """Mean, std (ddof) and count of each reward over reference rollouts, NaN-aware."""
  r = jnp.asarray(rewards_NK)
  obs = ~jnp.isnan(r)
  if valid_N is not None:
    obs = obs & jnp.asarray(valid_N, bool)[:, None]
  mean, var, count = jax.vmap(lambda x, m: seg.batch_moments(x, m, ddof), in_axes=1)(r, obs)
  return ReferenceStats(mean, jnp.sqrt(var), count)


@ESTIMATORS.register("reference_frozen")
def reference_frozen(inputs: AdvantageInputs, *, num_groups: int,
                     stats: ReferenceStats | Mapping[str, Any] | None = None,
                     eps: float = 1e-6) -> tuple[Array, Diagnostics]:
  """RFN: A = sum_k w_k (r_k - mean_k^ref) / (std_k^ref + eps) with frozen reference stats.

  `stats` comes from `fit_reference_stats` on reference-policy rollouts, or
  (from a config) a mapping {mean_K: [...], std_K: [...]} of its values.
  """
  del num_groups
  if stats is None:
    raise ValueError("reference_frozen needs option stats=fit_reference_stats(reference rewards) "
                     "(in a config: {'mean_K': [...], 'std_K': [...]}, one value per reward).")
  if not isinstance(stats, ReferenceStats):  # a mapping (a config's dict)
    stats = ReferenceStats(jnp.asarray(stats["mean_K"], jnp.float32),
                           jnp.asarray(stats["std_K"], jnp.float32),
                           jnp.asarray(stats.get("count_K", 0.0), jnp.float32))
  def terms(rows):
    r = inputs.rewards_NK[rows]
    obs = inputs.valid_N[rows][:, None] & ~jnp.isnan(r)
    return seg.safe_divide(r - stats.mean_K, stats.std_K + eps, obs) * inputs.weights_K

  return terms(slice(None)).sum(-1), {"contrib_NK": terms}


# ----------------------------------------------------------------------------
# LightningRL.


@ESTIMATORS.register("lightningrl")
def lightningrl(inputs: AdvantageInputs, *, num_groups: int, ddof: int = 0, eps: float = 0.0,
                batch_ddof: int = 0, batch_eps: float = 0.0) -> tuple[Array, Diagnostics]:
  """LightningRL: r = sum_k w_k z_g(r_k) with population std, no eps (term 0
  where the std is 0), then a batch z-score (same conventions)."""
  obs = observed(inputs)
  z, mag_NK = seg.group_zscore_with_magnitude(jnp.where(obs, inputs.rewards_NK, 0), obs,
                                              inputs.group_ids_N, num_groups, eps=eps, ddof=ddof)
  terms = z * inputs.weights_K
  pre = z @ inputs.weights_K
  rows = obs.any(-1)
  mean, var, total = seg.batch_moments(pre, rows, batch_ddof,
                                       magnitude=mag_NK @ jnp.abs(inputs.weights_K))
  scale = seg.safe_divide(jnp.ones_like(pre), jnp.sqrt(var) + batch_eps,
                          rows & (total > batch_ddof) & (var > 0))
  return seg.batch_center(pre, rows, mean, var) * scale, {"contrib_NK": terms * scale[:, None]}
