"""Multi-reward estimators published after GDPO: GD²PO, DVAO and MO-GRPO.

* gd2po (Liu et al. 2026, arXiv 2606.16771; official code
  Qwen-Applications/GD2PO, tool-calling/verl/trainer/ppo/ray_trainer.py,
  estimators gdpo_filter_group_ratio = variant "hard" and
  gdpo_filter_ratio_conflict_group_ratio = variant "snr").
* dvao (Jiang et al. 2026, arXiv 2605.25604, Eq. 9): per-reward group
  advantages combined with weights proportional to each reward's group std.
* mo_grpo (Ichihara et al. 2025, arXiv 2509.22047, Eq. 5): the sum of
  per-reward group z-scores (population std), i.e. rlx's mrn with ddof=0.

Not here: RDPO (arXiv 2605.13641), whose equations were not public
(docs/methods.md).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from rlx.advantages import segments as seg
from rlx.advantages.estimators import Array, Diagnostics, _per_reward_group_z, mrn, observed
from rlx.advantages.inputs import AdvantageInputs
from rlx.advantages.registry import ESTIMATORS, check_choice

GD2PO_VARIANTS = ("hard", "snr")


@ESTIMATORS.register("gd2po")
def gd2po(inputs: AdvantageInputs, *, num_groups: int, variant: str = "hard",
          threshold: float = 0.2, eps: float = 1e-6, ddof: int = 1,
          sign_eps: float = 1e-8, ratio_eps: float = 1e-8, group_ratio: bool = True,
          batch_norm: bool = True, batch_stats: str = "token", batch_eps: float = 1e-8,
          missing: str = "leave_out") -> tuple[Array, Diagnostics]:
  """GD²PO: GDPO that drops rollouts whose per-reward advantages disagree in sign.

  a_k = w_k (r_k - mean_g r_k) / (std_g r_k + eps) (GDPO's per-reward step);
  conflict_i = (some a_k > sign_eps) and (some a_k < -sign_eps);
  variant "hard": drop_i = conflict_i;
  variant "snr": drop_i = conflict_i and |sum_k a_k| / (sum_k |a_k| + ratio_eps) < threshold;
  rho_g = (kept rows of g) / (rows of g) (group_ratio=True);
  A_i = (1 - drop_i) rho_g sum_k a_k, then whitened over the kept rows
  (batch_stats="token", the official verl code: token-weighted mean and
  Bessel-corrected variance, (A - mean) rsqrt(var + batch_eps), lengths_N
  needed; "sequence": one weight per row, (A - mean) / (std + batch_eps)).
  Dropped rows get 0. Defaults are the official code's (threshold 0.2 in the
  code; its safe-alignment script uses 0.8).
  """
  check_choice(variant, GD2PO_VARIANTS, "variant", "gd2po")
  check_choice(batch_stats, ("sequence", "token"), "batch_stats", "gd2po")
  if not 0.0 <= threshold <= 1.0:
    raise ValueError(f"gd2po: option threshold={threshold!r} must lie in [0, 1].")
  z, rows, mag = _per_reward_group_z(inputs, num_groups, eps, ddof, missing, "gd2po")
  terms = z * inputs.weights_K
  conflict = (terms > sign_eps).any(-1) & (terms < -sign_eps).any(-1) & rows
  pre = terms.sum(-1)
  snr = pre / (jnp.abs(terms).sum(-1) + ratio_eps)
  drop = conflict & (jnp.abs(snr) < threshold) if variant == "snr" else conflict
  keep = rows & ~drop
  gid = inputs.group_ids_N
  if group_ratio:
    ratio = seg.safe_divide(seg.group_count(keep, gid, num_groups),
                            seg.group_count(rows, gid, num_groups))[gid]
  else:
    ratio = jnp.ones_like(pre)
  scaled = pre * ratio
  diags: Diagnostics = {
      "conflict_frac": conflict.sum() / jnp.maximum(rows.sum(), 1),
      "kept_frac": keep.sum() / jnp.maximum(rows.sum(), 1),
      "group_ratio_mean": jnp.where(rows, ratio, 0).sum() / jnp.maximum(rows.sum(), 1)}
  if not batch_norm:
    scale = keep.astype(pre.dtype)
    adv = scaled * scale
  else:
    if batch_stats == "token":
      weights = inputs.require("lengths_N", "gd2po with batch_stats='token'").astype(pre.dtype)
    else:
      weights = None
    mean, var, total = seg.batch_moments(scaled, keep, 1, weights=weights, magnitude=mag)
    ok = keep & (total > 1) & (var > 0)           # var 0: constant up to rounding
    if batch_stats == "token":
      scale = jnp.where(ok, jax.lax.rsqrt(var + batch_eps), 0)
    else:
      scale = seg.safe_divide(jnp.ones_like(pre), jnp.sqrt(var) + batch_eps, ok)
    adv = seg.batch_center(scaled, keep, mean, var) * scale
    diags["batch_mean"] = mean
    diags["batch_std"] = jnp.sqrt(var)
  diags["contrib_NK"] = terms * (ratio * scale)[:, None]
  return adv, diags


@ESTIMATORS.register("dvao")
def dvao(inputs: AdvantageInputs, *, num_groups: int, eps: float = 0.0, ddof: int = 0
         ) -> tuple[Array, Diagnostics]:
  """DVAO: A = sum_k w_k (r_k - mean_g r_k) / (sum_l w_l std_g r_l + eps).

  = sum_k c_k z_k with c_k = w_k std_k / sum_l w_l std_l: each reward's z-score
  weighted by its share of the group's spread, so |A| <= max_k |z_k|. Population
  std (ddof 0) as in the paper; the paper has no eps (rlx's default 0: A = 0
  where every reward is constant in the group). A missing reward is left out
  of its group's mean and std and of that row's sum.
  """
  obs = observed(inputs)
  x = jnp.where(obs, inputs.rewards_NK, 0)
  m = seg.group_moments(x, obs, inputs.group_ids_N, num_groups, ddof)
  w = inputs.weights_K
  spread_G = jnp.where(m.count_G > ddof, jnp.sqrt(m.var_G), 0) @ w
  scale = seg.safe_divide(jnp.ones_like(spread_G), spread_G + eps)[inputs.group_ids_N]
  scale = jnp.where(obs.any(-1), scale, 0)
  terms = m.centered * w * scale[:, None]
  return terms.sum(-1), {"contrib_NK": terms}


@ESTIMATORS.register("mo_grpo")
def mo_grpo(inputs: AdvantageInputs, *, num_groups: int, eps: float = 1e-4, ddof: int = 0,
            sqrt_k: bool = False, missing: str = "leave_out") -> tuple[Array, Diagnostics]:
  """MO-GRPO: A = sum_k w_k (r_k - mean_g r_k) / (std_g r_k + eps) (mrn, population std).

  Each reward is scaled by its own group std before the sum, so a reward with
  a large spread cannot dominate A (the paper's reward-hacking case); no batch
  step. sqrt_k=True divides A by sqrt(K), as the paper's appendix code does
  for two rewards (Eq. 5 does not).
  """
  adv, diags = mrn(inputs, num_groups=num_groups, eps=eps, ddof=ddof, missing=missing)
  if sqrt_k:
    c = 1.0 / jnp.sqrt(jnp.asarray(inputs.num_rewards, adv.dtype))
    adv, diags = adv * c, {"contrib_NK": diags["contrib_NK"] * c}
  return adv, diags
