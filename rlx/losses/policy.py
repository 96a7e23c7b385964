"""Policy-loss terms (docs/methods.md section 4): pg, kl, entropy, nll_correct, drpo.

Every term takes a `LossInputs` and static options, returns (scalar, metrics).
String options are declared with their valid values at registration
(`loss_term(..., choices=...)`) and checked there, at start-up.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from rlx.losses.aggregation import AGGREGATIONS, aggregate, masked_max, masked_mean, masked_min
from rlx.losses.inputs import LossInputs, broadcast_advantages, masked
from rlx.losses.terms import loss_term
from rlx.registry import check_choice

Array = jax.Array
sg = jax.lax.stop_gradient

KL_ESTIMATORS = ("k1", "k2", "k3", "k3_st")
RATIO_LEVELS = ("token", "sequence")
IS_MODES = ("truncate", "mask")
IS_LEVELS = ("token", "sequence")
# exp() of log-ratios is taken after clipping them to this range (as verl does),
# so a wild token cannot make inf * 0 = NaN in the backward pass.
_LOG_RATIO_BOUND = 20.0


# ----------------------------------------------------------------------------
# KL estimators
# ----------------------------------------------------------------------------

def kl_estimate(logp: Array, ref_logp: Array, estimator: str = "k3") -> Array:
  """Per-sample estimate of KL(pi || ref) from samples of pi; d = ref_logp - logp.

  k1 = -d (unbiased); k2 = d^2 / 2 (biased, low variance); k3 = exp(d) - d - 1
  (unbiased, >= 0, low variance); k3_st: the value of k3 with the gradient of
  k2 (straight-through).
  """
  check_choice(estimator, KL_ESTIMATORS, "estimator", "kl_estimate")
  d = ref_logp - logp
  if estimator == "k1":
    return -d
  k2 = 0.5 * jnp.square(d)
  if estimator == "k2":
    return k2
  k3 = jnp.expm1(jnp.clip(d, max=_LOG_RATIO_BOUND)) - d
  if estimator == "k3":
    return k3
  return k2 + sg(k3 - k2)


# ----------------------------------------------------------------------------
# Truncated importance sampling (sampler vs trainer mismatch)
# ----------------------------------------------------------------------------

def truncated_is_weights(old_logp_NT: Array, sample_logp_NT: Array, mask_NT: Array, *,
                         level: str = "token", mode: str = "truncate", cap: float = 2.0,
                         lower: float | None = None) -> tuple[Array, Array, dict[str, Array]]:
  """Detached weights rho = pi_old / pi_sampler correcting the sampler mismatch.

  level: `token` (rho per token) or `sequence` (prod_t rho_t, one per row).
  mode: `truncate`: w = min(rho, cap) (TIS, Yao et al. 2025; verl cap 2);
        `mask`: w = rho where lower <= rho <= cap, and tokens (token level) or
        rows (sequence level) outside are removed from the mask, hence from the
        aggregation denominators (verl's mask mode; lower None = 1 / cap).
  Returns (w_NT, new mask_NT, metrics). w is stop-gradient.
  """
  check_choice(level, IS_LEVELS, "level", "truncated_is_weights")
  check_choice(mode, IS_MODES, "mode", "truncated_is_weights")
  valid = mask_NT > 0
  log_rho = masked(sg(old_logp_NT) - sg(sample_logp_NT), mask_NT)
  if level == "sequence":
    log_rho = jnp.broadcast_to(log_rho.sum(-1, keepdims=True), log_rho.shape)
  rho = jnp.exp(jnp.clip(log_rho, -_LOG_RATIO_BOUND, _LOG_RATIO_BOUND))
  if mode == "truncate":
    w = jnp.minimum(rho, cap)
    dropped = valid & (rho > cap)
    new_mask = mask_NT
  else:
    lo = 1.0 / cap if lower is None else lower
    keep = (rho >= lo) & (rho <= cap)
    w = jnp.where(keep, rho, 0.0)
    dropped = valid & ~keep
    new_mask = jnp.where(keep, mask_NT, jnp.zeros_like(mask_NT))
  w = sg(masked(w, new_mask))
  metrics = {
      "is_weight_mean": masked_mean(w, new_mask),
      "is_rho_mean": masked_mean(rho, mask_NT),
      "is_rho_max": masked_max(rho, mask_NT),
      "is_rho_min": masked_min(rho, mask_NT),
      ("is_truncated_frac" if mode == "truncate" else "is_masked_frac"):
          masked_mean(dropped.astype(w.dtype), mask_NT),
  }
  return w, new_mask, metrics


# ----------------------------------------------------------------------------
# Policy gradient
# ----------------------------------------------------------------------------

def importance_ratio(logp_NT: Array, old_logp_NT: Array, mask_NT: Array,
                     level: str = "token") -> Array:
  """rho[i,t] = pi/pi_old per token, or GSPO's sequence ratio broadcast to tokens.

  Sequence level (GSPO-token form): s_i = exp(mean_t (logp - old_logp)) as the
  value, gradient s_i * grad logp[i,t]; with `seq_mean_token_mean` aggregation
  and a per-sequence advantage this is exactly GSPO.
  """
  check_choice(level, RATIO_LEVELS, "level", "importance_ratio")
  logp = masked(logp_NT, mask_NT)
  log_ratio = logp - masked(old_logp_NT, mask_NT)
  if level == "token":
    return jnp.exp(jnp.clip(log_ratio, -_LOG_RATIO_BOUND, _LOG_RATIO_BOUND))
  m = (mask_NT > 0).astype(logp.dtype)
  seq = (log_ratio * m).sum(-1) / jnp.maximum(m.sum(-1), 1.0)
  s_N = jnp.exp(jnp.clip(seq, -_LOG_RATIO_BOUND, _LOG_RATIO_BOUND))
  return sg(s_N)[:, None] * jnp.exp(logp - sg(logp))


@loss_term("pg", default_coef=1.0, choices={
    "ratio_level": RATIO_LEVELS, "aggregation": AGGREGATIONS,
    "is_mode": (None,) + IS_MODES, "is_level": IS_LEVELS})
def policy_gradient(inputs: LossInputs, *, clip_low: float = 0.2, clip_high: float = 0.2,
                    ratio_level: str = "token", dual_clip: bool = False,
                    dual_clip_c: float = 3.0, aggregation: str = "token_mean",
                    is_mode: str | None = None, is_level: str = "token",
                    is_cap: float = 2.0, is_lower: float | None = None
                    ) -> tuple[Array, dict[str, Array]]:
  """Clipped surrogate  max(-A rho, -A clip(rho, 1 - clip_low, 1 + clip_high)).

  clip_high 0.28 is DAPO's clip-higher. dual_clip (Ye et al. 2020): for A < 0
  the loss is further capped at -A * dual_clip_c (c = 3). ratio_level
  `sequence` is GSPO (use its small clip ranges, e.g. 3e-4 / 4e-4).
  is_mode None | truncate | mask: truncated importance-sampling correction
  between sampler and trainer (`truncated_is_weights`), a detached weight on
  every token's loss; needs sample_logp_NT.
  Metrics: clip_frac_low (rho < 1 - clip_low, A < 0), clip_frac_high
  (rho > 1 + clip_high, A > 0), dual_clip_frac, approx_kl (k3 estimate of
  KL(sampling policy || current)), ratio_mean / min / max, is_* when enabled.
  """
  adv = inputs.require("advantages", "pg")
  mask = inputs.mask_NT
  logp = inputs.logp_NT
  a = masked(broadcast_advantages(adv, logp.shape).astype(logp.dtype), mask)
  a = jnp.broadcast_to(a, logp.shape)
  metrics: dict[str, Array] = {}
  w_is = None
  if is_mode is not None:
    sample = inputs.require("sample_logp_NT", "pg (is_mode)")
    w_is, mask, is_metrics = truncated_is_weights(
        inputs.old_logp, sample, mask, level=is_level, mode=is_mode, cap=is_cap,
        lower=is_lower)
    metrics.update(is_metrics)

  ratio = importance_ratio(logp, inputs.old_logp, mask, ratio_level)
  loss1 = -a * ratio
  loss2 = -a * jnp.clip(ratio, 1.0 - clip_low, 1.0 + clip_high)
  loss_NT = jnp.maximum(loss1, loss2)
  r = sg(ratio)
  if dual_clip:
    loss_NT = jnp.where(a < 0, jnp.minimum(loss_NT, -a * dual_clip_c), loss_NT)
    metrics["dual_clip_frac"] = masked_mean(((a < 0) & (r > dual_clip_c)).astype(r.dtype), mask)
  if w_is is not None:
    loss_NT = loss_NT * w_is
  loss = aggregate(loss_NT, mask, aggregation, inputs.l_max)

  metrics["clip_frac_low"] = masked_mean(((r < 1.0 - clip_low) & (a < 0)).astype(r.dtype), mask)
  metrics["clip_frac_high"] = masked_mean(((r > 1.0 + clip_high) & (a > 0)).astype(r.dtype), mask)
  metrics["approx_kl"] = masked_mean(
      kl_estimate(masked(sg(inputs.sample_logp), mask), masked(sg(logp), mask), "k3"), mask)
  metrics["ratio_mean"] = masked_mean(r, mask)
  metrics["ratio_min"] = masked_min(r, mask)
  metrics["ratio_max"] = masked_max(r, mask)
  return loss, metrics


# ----------------------------------------------------------------------------
# KL to the reference, entropy, NLL anchor
# ----------------------------------------------------------------------------

@loss_term("kl", default_coef=None,
           choices={"estimator": KL_ESTIMATORS, "aggregation": AGGREGATIONS})
def kl_to_reference(inputs: LossInputs, *, estimator: str = "k3",
                    aggregation: str = "token_mean", clamp: float | None = None
                    ) -> tuple[Array, dict[str, Array]]:
  """Aggregated per-token KL(pi || ref) estimate (`kl_estimate`); needs ref_logp_NT.

  clamp: optional bound on each token's estimate (verl clamps k3 to [-10, 10]).
  Metrics: k1 and k3 token means (for monitoring, whatever the estimator).
  """
  mask = inputs.mask_NT
  logp = masked(inputs.logp_NT, mask)
  ref = masked(inputs.require("ref_logp_NT", "kl"), mask)
  k_NT = kl_estimate(logp, ref, estimator)
  if clamp is not None:
    k_NT = jnp.clip(k_NT, -clamp, clamp)
  loss = aggregate(k_NT, mask, aggregation, inputs.l_max)
  metrics = {"k1_mean": masked_mean(sg(kl_estimate(logp, ref, "k1")), mask),
             "k3_mean": masked_mean(sg(kl_estimate(logp, ref, "k3")), mask)}
  return loss, metrics


@loss_term("entropy", default_coef=None, choices={"aggregation": AGGREGATIONS})
def entropy_bonus(inputs: LossInputs, *, aggregation: str = "token_mean"
                  ) -> tuple[Array, dict[str, Array]]:
  """-aggregate(entropy): with coef > 0 minimizing the total raises entropy."""
  mask = inputs.mask_NT
  ent = masked(inputs.require("entropy_NT", "entropy"), mask)
  return -aggregate(ent, mask, aggregation, inputs.l_max), {"mean": masked_mean(sg(ent), mask)}


@loss_term("nll_correct", default_coef=None, choices={"aggregation": AGGREGATIONS})
def nll_correct(inputs: LossInputs, *, aggregation: str = "token_mean"
                ) -> tuple[Array, dict[str, Array]]:
  """NLL anchor (LightningRL): mean(-logp) over tokens of completions flagged correct.

  LightningRL uses coef 0.1. Zero when no completion is correct.
  """
  correct = inputs.require("correct_N", "nll_correct")
  mask = jnp.where((correct > 0)[:, None], inputs.mask_NT, jnp.zeros_like(inputs.mask_NT))
  nll = -masked(inputs.logp_NT, mask)
  loss = aggregate(nll, mask, aggregation, inputs.l_max)
  valid_rows = (inputs.mask_NT > 0).any(-1)
  return loss, {"frac_correct": masked_mean((correct > 0).astype(nll.dtype), valid_rows)}


# ----------------------------------------------------------------------------
# DRPO
# ----------------------------------------------------------------------------

def _segment_sum(x: Array, seg: Array, n: int) -> Array:
  return jax.ops.segment_sum(x, seg, num_segments=n)


def _segment_max(x: Array, seg: Array, n: int) -> Array:
  out = jax.ops.segment_max(x, seg, num_segments=n)
  return jnp.where(jnp.isfinite(out), out, 0.0)


@loss_term("drpo", default_coef=1.0, choices={"kl_estimator": KL_ESTIMATORS})
def drpo(inputs: LossInputs, *, lam: float = 0.1, tau: float = 10.0, beta: float = 1e3,
         delta: float = 1e-4, kl_estimator: str = "k3") -> tuple[Array, dict[str, Array]]:
  """DRPO (decoupled reward policy optimization, length-efficient reasoning).

  Score s(o) = mean token logp. Only groups with both correct and wrong members
  count. Per group g:
    J_g = sum_{i pos} w_i s(o_i) - tau log mean_{j neg} exp(s(o_j) / tau),
    w = softmax over the correct members of (1 - |o_i| / L_max) / lam.
  Loss = -(sum_g J_g) / (number of groups in the batch)
         + stop_grad(max(beta (KL - delta), 0)) * KL,
  KL = token mean of the estimate of KL(pi_old || pi) (k3, as the official
  verl code, with beta 1e3 as its DisCO/DRPO recipe). lam 0.1, tau 10,
  delta 1e-4. Needs correct_N and group_N.
  """
  mask = inputs.mask_NT
  m = (mask > 0).astype(inputs.logp_NT.dtype)
  logp = masked(inputs.logp_NT, mask)
  correct = inputs.require("correct_N", "drpo") > 0
  n_seg = inputs.num_groups if inputs.num_groups is not None else inputs.num_rows
  group = jnp.clip(inputs.require("group_N", "drpo").astype(jnp.int32), 0, n_seg - 1)
  len_tok = m.sum(-1)
  row = len_tok > 0
  pos, neg = row & correct, row & ~correct
  score = (logp * m).sum(-1) / jnp.maximum(len_tok, 1.0)

  n_pos = _segment_sum(pos.astype(m.dtype), group, n_seg)
  n_neg = _segment_sum(neg.astype(m.dtype), group, n_seg)
  n_rows = _segment_sum(row.astype(m.dtype), group, n_seg)
  valid_g = (n_pos > 0) & (n_neg > 0)

  length = inputs.lengths.astype(m.dtype)
  z = jnp.where(pos, (1.0 - length / inputs.l_max) / lam, 0.0)
  z_max = _segment_max(jnp.where(pos, z, -jnp.inf), group, n_seg)
  e = jnp.where(pos, jnp.exp(z - z_max[group]), 0.0)
  w = e / jnp.maximum(_segment_sum(e, group, n_seg), 1e-30)[group]
  pos_term = _segment_sum(w * jnp.where(pos, score, 0.0), group, n_seg)

  u = jnp.where(neg, score / tau, 0.0)
  u_max = sg(_segment_max(jnp.where(neg, u, -jnp.inf), group, n_seg))
  sum_exp = _segment_sum(jnp.where(neg, jnp.exp(u - u_max[group]), 0.0), group, n_seg)
  log_mean_exp = u_max + jnp.log(jnp.maximum(sum_exp, 1e-30)) - jnp.log(jnp.maximum(n_neg, 1.0))
  j_g = jnp.where(valid_g, pos_term - tau * log_mean_exp, 0.0)
  n_groups = jnp.maximum((n_rows > 0).sum(), 1).astype(m.dtype)
  objective = j_g.sum() / n_groups

  # KL(pi_old || pi) from samples of pi_old: d = logp - old_logp (verl's ppo_kl).
  kl = masked_mean(kl_estimate(masked(inputs.old_logp, mask), logp, kl_estimator), mask)
  coef = sg(jnp.maximum(beta * (kl - delta), 0.0))
  loss = -objective + coef * kl
  metrics = {"objective": sg(objective), "kl": sg(kl), "kl_active": (kl > delta).astype(m.dtype),
             "frac_groups_used": valid_g.sum().astype(m.dtype) / n_groups}
  return loss, metrics
