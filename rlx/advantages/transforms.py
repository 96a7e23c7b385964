"""Reward shaping before normalization (docs/methods.md section 2).

Pure jnp functions, plus a registry TRANSFORMS of transforms on
`AdvantageInputs` that a config composes by name (`config.advantage.transforms`,
applied in the jitted advantage step before the estimator and the filter):

    specs = [{"name": "conditioned", "target": "length", "condition": "correct"},
             {"name": "overlong_penalty", "max_length": 4096, "cache_length": 512}]
    inputs = apply_transforms(inputs, specs)

A registered transform is `fn(inputs, **options) -> inputs` (options
keyword-only). Per-prompt data that a transform needs (reference rewards,
confounders, difficulty scales) lives in `inputs.extras` under a key the
transform names (in training: `config.advantage.columns`). Missing rewards (NaN)
stay missing.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
from jax.scipy.stats import norm

from rlx.advantages.inputs import AdvantageInputs
from rlx.ensemble import ENSEMBLE_AGGREGATIONS, ensemble_aggregate  # noqa: F401
from rlx.registry import Registry, check_choice

Array = jax.Array

TRANSFORMS = Registry("reward transform")


# ----------------------------------------------------------------------------
# Pure functions.


def conditioned_reward(target: Array, condition: Array, threshold: float) -> Array:
  """r_target if r_condition >= threshold else 0 (GDPO Eq. 8); NaN condition -> NaN."""
  return jnp.where(jnp.isnan(condition), jnp.nan,
                   jnp.where(condition >= threshold, target, jnp.zeros_like(target)))


def overlong_penalty(lengths_N: Array, max_length: int, cache_length: int) -> Array:
  """DAPO soft overlong penalty: 0 if L <= Lmax - C; ((Lmax - C) - L) / C if
  Lmax - C < L <= Lmax; -1 beyond."""
  length = jnp.asarray(lengths_N, jnp.float32)
  start = float(max_length - cache_length)
  soft = (start - length) / float(max(cache_length, 1))
  return jnp.where(length <= start, 0.0, jnp.where(length <= max_length, soft, -1.0))


def reference_levels(ref_rewards: Array, ref_mask: Array | None = None, *,
                     quantile: float = 0.85, method: str = "normal") -> Array:
  """Per-prompt reference level from reference-policy rewards [G, M, ...].

  method "normal": mean + Phi^-1(quantile) std (ddof 0) under a normal fit
  (1.0364 std at the 85th percentile); "empirical": the masked quantile
  (linear interpolation). NaN rewards are masked out. Returns [G, ...].
  """
  check_choice(method, ("normal", "empirical"), "method", "reference_levels")
  r = jnp.asarray(ref_rewards)
  mask = ~jnp.isnan(r) if ref_mask is None else (
      jnp.asarray(ref_mask, bool).reshape(r.shape[:2] + (1,) * (r.ndim - 2)) & ~jnp.isnan(r))
  mask = jnp.broadcast_to(mask, r.shape)
  if method == "normal":
    n = jnp.maximum(mask.sum(1), 1)
    mean = jnp.where(mask, r, 0).sum(1) / n
    var = jnp.where(mask, (r - jnp.expand_dims(mean, 1)) ** 2, 0).sum(1) / n
    return mean + norm.ppf(quantile) * jnp.sqrt(var)
  return jnp.nanquantile(jnp.where(mask, r, jnp.nan), quantile, axis=1)


def log_sigmoid_transform(rewards: Array, levels: Array) -> Array:
  """u = log sigmoid(r - ref(x)) (Wang et al. 2024); sum_k u_k is the conjunction."""
  return jax.nn.log_sigmoid(rewards - levels)


def calibrate(rewards_N: Array, ref_rewards_GM: Array, group_ids_N: Array) -> Array:
  """InfAlign calibration c = P_ref[r_ref < r] + 0.5 P_ref[r_ref = r] over the
  reference rewards of the completion's prompt (NaN reference entries ignored;
  0.5 when a prompt has none)."""
  ref = ref_rewards_GM[group_ids_N]                       # [N, M]
  has = ~jnp.isnan(ref)
  r = rewards_N[:, None]
  less = (has & (ref < r)).sum(-1)
  equal = (has & (ref == r)).sum(-1)
  n = has.sum(-1)
  c = (less + 0.5 * equal) / jnp.maximum(n, 1)
  return jnp.where(n > 0, c, 0.5).astype(rewards_N.dtype)


def calibration_transform(c: Array, mode: str = "identity", t: float = 1.0) -> Array:
  """InfAlign CTRL transform of a calibrated reward: exp(t c) for best-of-N
  ("bon"), -exp(-t c) for worst-of-N ("won"), c otherwise ("identity")."""
  check_choice(mode, ("identity", "bon", "won"), "mode", "calibration_transform")
  if mode == "bon":
    return jnp.exp(t * c)
  if mode == "won":
    return -jnp.exp(-t * c)
  return c


def difficulty_scale(rewards: Array, scale: Array) -> Array:
  """GRPO-S difficulty scaling r <- s(x) r with a per-prompt (or per-row) scale."""
  return rewards * scale.reshape(scale.shape + (1,) * (rewards.ndim - scale.ndim))


def deconfound(rewards_N: Array, features_NF: Array, mask_N: Array | None = None, *,
               keep_mean: bool = False) -> Array:
  """DeconfoundLM: residual of the reward after least squares on confounder
  features (with an intercept) over the rows of mask_N (and non-NaN rewards).
  keep_mean adds the reward mean back. NaN rewards stay NaN."""
  r = jnp.asarray(rewards_N)
  feats = jnp.asarray(features_NF, r.dtype)
  mask = ~jnp.isnan(r) if mask_N is None else jnp.asarray(mask_N, bool) & ~jnp.isnan(r)
  x = jnp.concatenate([jnp.ones((r.shape[0], 1), r.dtype), feats], axis=1)
  m = mask[:, None].astype(r.dtype)
  y = jnp.where(mask, r, 0)
  beta, *_ = jnp.linalg.lstsq(x * m, y, rcond=None)
  resid = r - x @ beta
  if keep_mean:
    resid = resid + y.sum() / jnp.maximum(mask.sum(), 1)
  return jnp.where(jnp.isnan(r), jnp.nan, resid)


def cmo_weights(rewards_NK: Array, mask_NK: Array | None = None, *, lam: float = 1.0) -> Array:
  """Correlation weighting (CMO), as rlx reads it: w_k proportional to
  (1 - mean_k) + lam * mean_{l != k} max(0, -corr_kl), normalized to sum 1
  (uniform if all zero). Rewards are assumed in [0, 1]; corr is the
  pairwise-complete Pearson correlation of the batch."""
  from rlx.advantages.diagnostics import reward_correlation_matrix  # pylint: disable=g-import-not-at-top
  r = jnp.asarray(rewards_NK)
  mask = ~jnp.isnan(r) if mask_NK is None else jnp.asarray(mask_NK, bool) & ~jnp.isnan(r)
  k = r.shape[1]
  mean = jnp.where(mask, r, 0).sum(0) / jnp.maximum(mask.sum(0), 1)
  difficulty = jnp.clip(1 - mean, 0, 1)
  corr = reward_correlation_matrix(r, mask)
  off = ~jnp.eye(k, dtype=bool)
  conflict = jnp.where(off, jnp.maximum(-corr, 0), 0).sum(1) / max(k - 1, 1)
  raw = difficulty + lam * conflict
  total = raw.sum()
  return jnp.where(total > 0, raw / jnp.where(total > 0, total, 1), 1.0 / k)


# ----------------------------------------------------------------------------
# Registered transforms on AdvantageInputs.


def _columns(inputs: AdvantageInputs, columns: Sequence[int | str] | None) -> list[int]:
  if columns is None:
    return list(range(inputs.num_rewards))
  if isinstance(columns, (str, int)):
    columns = [columns]
  return [inputs.reward_index(c) for c in columns]


def _extra(inputs: AdvantageInputs, key: str, who: str) -> Array:
  if key not in inputs.extras:
    raise KeyError(f"{who} needs inputs.extras[{key!r}] (in training: set "
                   f"config.advantage.columns.{key} to the data column that holds it, or "
                   f"config.advantage.inputs.{key} to a producer, e.g. reference_samples "
                   f"for reference rewards); "
                   f"extras has: {', '.join(sorted(inputs.extras)) or '(none)'}.")
  return jnp.asarray(inputs.extras[key])


def _set_columns(inputs: AdvantageInputs, cols: list[int], values_NK: Array) -> AdvantageInputs:
  r = inputs.rewards_NK.at[:, jnp.asarray(cols)].set(values_NK.astype(inputs.rewards_NK.dtype))
  return inputs.replace(rewards_NK=r)


def _append_column(inputs: AdvantageInputs, values_N: Array, name: str,
                   weight: float) -> AdvantageInputs:
  if name in inputs.reward_names:
    raise ValueError(f"A reward named {name!r} exists already; pass another name.")
  return inputs.replace(
      rewards_NK=jnp.concatenate([inputs.rewards_NK, values_N[:, None].astype(
          inputs.rewards_NK.dtype)], axis=1),
      weights_K=jnp.concatenate([inputs.weights_K, jnp.full((1,), weight, inputs.weights_K.dtype)]),
      reward_names=inputs.reward_names + (name,))


@TRANSFORMS.register("conditioned")
def _conditioned(inputs: AdvantageInputs, *, target: int | str, condition: int | str,
                 threshold: float = 1.0) -> AdvantageInputs:
  """r_target <- r_target if r_condition >= threshold else 0."""
  t, c = inputs.reward_index(target), inputs.reward_index(condition)
  new = conditioned_reward(inputs.rewards_NK[:, t], inputs.rewards_NK[:, c], threshold)
  return _set_columns(inputs, [t], new[:, None])


@TRANSFORMS.register("overlong_penalty")
def _overlong(inputs: AdvantageInputs, *, max_length: int, cache_length: int,
              target: int | str | None = None, name: str = "overlong",
              weight: float = 1.0) -> AdvantageInputs:
  """DAPO soft overlong penalty from lengths_N: added to reward `target`, or
  appended as a new reward `name` with weight `weight` when target is None."""
  pen = overlong_penalty(inputs.require("lengths_N", "overlong_penalty"), max_length,
                         cache_length)
  if target is None:
    return _append_column(inputs, pen, name, weight)
  t = inputs.reward_index(target)
  return _set_columns(inputs, [t], (inputs.rewards_NK[:, t] + pen)[:, None])


@TRANSFORMS.register("log_sigmoid")
def _log_sigmoid(inputs: AdvantageInputs, *, columns: Sequence[int | str] | None = None,
                 levels_key: str = "reference_levels_GK", ref_key: str | None = None,
                 quantile: float = 0.85, method: str = "normal") -> AdvantageInputs:
  """u_k = log sigmoid(r_k - ref_k(x)) with per-prompt levels extras[levels_key]
  ([num_groups, K]), or, with ref_key, levels `reference_levels(extras[ref_key],
  quantile=quantile, method=method)` of reference rewards [num_groups, M, K];
  GRPO's weighted sum of the u_k is then the log-sigmoid conjunction."""
  check_choice(method, ("normal", "empirical"), "method", "log_sigmoid")
  cols = _columns(inputs, columns)
  if ref_key is None:
    levels_GK = _extra(inputs, levels_key, "log_sigmoid")
  else:
    levels_GK = reference_levels(_extra(inputs, ref_key, "log_sigmoid"), quantile=quantile,
                                 method=method)
  levels = levels_GK[inputs.group_ids_N]
  ia = jnp.asarray(cols)
  return _set_columns(inputs, cols, log_sigmoid_transform(inputs.rewards_NK[:, ia], levels[:, ia]))


@TRANSFORMS.register("calibrate")
def _calibrate(inputs: AdvantageInputs, *, columns: Sequence[int | str] | None = None,
               ref_key: str = "reference_rewards_GMK", mode: str = "identity",
               t: float = 1.0) -> AdvantageInputs:
  """InfAlign: calibrate each reward against reference rewards
  extras[ref_key] ([num_groups, M, K], NaN = none), then transform (mode
  identity | bon | won with temperature t)."""
  check_choice(mode, ("identity", "bon", "won"), "mode", "calibrate")
  cols = _columns(inputs, columns)
  ref = _extra(inputs, ref_key, "calibrate")
  outs = []
  for c in cols:
    r = inputs.rewards_NK[:, c]
    cal = calibration_transform(calibrate(r, ref[:, :, c], inputs.group_ids_N), mode, t)
    outs.append(jnp.where(jnp.isnan(r), jnp.nan, cal))
  return _set_columns(inputs, cols, jnp.stack(outs, -1))


@TRANSFORMS.register("ensemble")
def _ensemble(inputs: AdvantageInputs, *, columns: Sequence[int | str], method: str = "mean",
              lam: float = 1.0, name: str = "ensemble", weight: float = 1.0) -> AdvantageInputs:
  """Replaces the reward-model columns `columns` by one aggregated reward `name`
  (mean | median | min | mean_minus_std), appended last with weight `weight`."""
  cols = _columns(inputs, columns)
  agg = ensemble_aggregate(inputs.rewards_NK[:, jnp.asarray(cols)], method, lam)
  keep = [i for i in range(inputs.num_rewards) if i not in cols]
  ka = jnp.asarray(keep, jnp.int32)
  base = inputs.replace(rewards_NK=inputs.rewards_NK[:, ka], weights_K=inputs.weights_K[ka],
                        reward_names=tuple(inputs.reward_names[i] for i in keep))
  return _append_column(base, agg, name, weight)


@TRANSFORMS.register("difficulty_scale")
def _difficulty(inputs: AdvantageInputs, *, columns: Sequence[int | str] | None = None,
                key: str = "difficulty_scale_G", per: str = "group") -> AdvantageInputs:
  """r <- s(x) r with extras[key] per prompt group ([num_groups]) or per row ([N])."""
  check_choice(per, ("group", "row"), "per", "difficulty_scale")
  scale = _extra(inputs, key, "difficulty_scale")
  scale_N = scale[inputs.group_ids_N] if per == "group" else scale
  cols = _columns(inputs, columns)
  ia = jnp.asarray(cols)
  return _set_columns(inputs, cols, difficulty_scale(inputs.rewards_NK[:, ia], scale_N))


@TRANSFORMS.register("deconfound")
def _deconfound(inputs: AdvantageInputs, *, columns: Sequence[int | str] | None = None,
                key: str = "confounders_NF", keep_mean: bool = False) -> AdvantageInputs:
  """Residualizes each reward on extras[key] ([N, F] or [N]) by least squares
  over valid rows; key "lengths_N" uses the completion lengths (length bias)."""
  feats = (inputs.require("lengths_N", "deconfound") if key == "lengths_N"
           else _extra(inputs, key, "deconfound"))
  feats = feats.reshape(feats.shape[0], -1)
  cols = _columns(inputs, columns)
  outs = [deconfound(inputs.rewards_NK[:, c], feats, inputs.valid_N, keep_mean=keep_mean)
          for c in cols]
  return _set_columns(inputs, cols, jnp.stack(outs, -1))


@TRANSFORMS.register("cmo_weights")
def _cmo(inputs: AdvantageInputs, *, lam: float = 1.0, multiply: bool = False) -> AdvantageInputs:
  """Sets weights_K from per-reward difficulty and negative correlations
  (`cmo_weights`); multiply=True multiplies the configured weights instead."""
  mask = inputs.valid_N[:, None] & ~jnp.isnan(inputs.rewards_NK)
  w = cmo_weights(inputs.rewards_NK, mask, lam=lam).astype(inputs.weights_K.dtype)
  return inputs.replace(weights_K=inputs.weights_K * w if multiply else w)


def apply_transforms(inputs: AdvantageInputs,
                     specs: Sequence[Mapping[str, Any] | tuple[str, Mapping[str, Any]]]
                     ) -> AdvantageInputs:
  """Applies registered transforms in order. Each spec is {"name": ..., **options}
  or (name, options); unknown names or options raise errors listing valid ones."""
  for spec in specs:
    if isinstance(spec, Mapping):
      spec = dict(spec)
      if "name" not in spec:
        raise ValueError(f"Transform spec {spec} has no 'name'. Valid: {TRANSFORMS.names()}.")
      name = spec.pop("name")
      options = spec
    else:
      name, options = spec
      options = dict(options)
    fn = TRANSFORMS.check_options(name, options)
    inputs = fn(inputs, **options)
  return inputs
