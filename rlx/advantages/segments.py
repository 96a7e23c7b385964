"""Masked segment statistics over prompt groups (no Python loops over groups).

All functions take a value array whose leading axis is N (completions), an
equally shaped boolean mask, integer group ids [N] in [0, num_groups) and a
static `num_groups`. Trailing axes (e.g. K rewards) are handled at once.

Group means and variances are computed on values shifted by the group's
smallest masked-in value (the same whatever the row order), so a group whose
values are all equal gives exactly zero centered values and zero variance,
whatever the float rounding of its mean.

Degenerate statistics (rounding noise is not signal; docs/methods.md). Every std below is
compared with the rounding level of what it normalizes: ROUNDING_ULPS machine
epsilons of the largest `magnitude` that entered it (by default |x|; a caller
whose x is itself computed, e.g. a sum of z-scores that may cancel, passes
the magnitude of the terms that made x, see `zscore_magnitude`). A std at or
below that floor counts as zero: the variance is 0 and the centered values
are 0, so the normalized values are 0 there whatever eps (also eps = 0). The
official formulas divide such noise by its own std (or by std + eps), which
turns float rounding into advantages of unit size whose sign depends on the
row order; elsewhere rlx equals them.
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

Array = jax.Array


ROUNDING_ULPS = 16


def rounding_floor(magnitude: Array, dtype) -> Array:
  """Spread at or below which values of this magnitude count as equal:
  ROUNDING_ULPS * eps(dtype) * magnitude (3.8e-6 relative in float32)."""
  return ROUNDING_ULPS * jnp.finfo(dtype).eps * magnitude


def _expand(mask: Array, like: Array) -> Array:
  return jnp.broadcast_to(mask.reshape(mask.shape + (1,) * (like.ndim - mask.ndim)), like.shape)


def group_count(mask: Array, group_ids_N: Array, num_groups: int, dtype=jnp.float32) -> Array:
  """Number of masked-in members per group: [G, ...]."""
  return jax.ops.segment_sum(mask.astype(dtype), group_ids_N, num_groups)


def group_max(x: Array, mask: Array, group_ids_N: Array, num_groups: int) -> Array:
  """Max over masked-in members; -inf for empty groups."""
  return jax.ops.segment_max(jnp.where(mask, x, -jnp.inf), group_ids_N, num_groups)


def group_min(x: Array, mask: Array, group_ids_N: Array, num_groups: int) -> Array:
  """Min over masked-in members; +inf for empty groups."""
  return jax.ops.segment_min(jnp.where(mask, x, jnp.inf), group_ids_N, num_groups)


class GroupMoments(NamedTuple):
  """Masked group statistics; `*_G` are per group, the rest gathered per member."""
  centered: Array   # x - mean of the member's group; 0 where masked out.
  std: Array        # std of the member's group (ddof as requested).
  count: Array      # number of masked-in members of the member's group.
  mean_G: Array     # [G, ...] group means (0 for empty groups).
  var_G: Array      # [G, ...] group variances (0 where count <= ddof).
  count_G: Array    # [G, ...] group counts.
  magnitude_G: Array  # [G, ...] largest magnitude that entered the group's statistics.


def group_moments(x: Array, mask: Array, group_ids_N: Array, num_groups: int,
                  ddof: int = 1, magnitude: Array | None = None) -> GroupMoments:
  """Mean, variance and centered values per group, ignoring masked-out entries.

  Args:
    x: [N, ...] values (NaN allowed where mask is False).
    mask: bool, same shape as x (or [N], broadcast).
    group_ids_N: int [N].
    num_groups: static number of groups.
    ddof: delta degrees of freedom of the variance (1: sample variance).
    magnitude: [N, ...] size of what made each value (default |x|); a group
      whose std is at or below `rounding_floor` of its largest magnitude gets
      variance 0 and centered values 0 (module docstring).
  """
  mask = _expand(mask, x)
  dtype = x.dtype
  xm = jnp.where(mask, x, 0).astype(dtype)
  mag = jnp.abs(xm) if magnitude is None else jnp.where(mask, jnp.abs(magnitude), 0)
  # Shift by the group's smallest value: equal values give exact zeros.
  low_G = jax.ops.segment_min(jnp.where(mask, x, jnp.inf), group_ids_N, num_groups)
  shift_G = jnp.where(jnp.isfinite(low_G), low_G, 0).astype(dtype)
  d = jnp.where(mask, xm - shift_G[group_ids_N], 0).astype(dtype)
  maskf = mask.astype(dtype)
  count_G = jax.ops.segment_sum(maskf, group_ids_N, num_groups)
  mean_d_G = jax.ops.segment_sum(d, group_ids_N, num_groups) / jnp.maximum(count_G, 1)
  centered = jnp.where(mask, d - mean_d_G[group_ids_N], 0)
  var_G = (jax.ops.segment_sum(centered * centered, group_ids_N, num_groups)
           / jnp.maximum(count_G - ddof, 1))
  magnitude_G = jax.ops.segment_max(mag.astype(dtype), group_ids_N, num_groups)
  magnitude_G = jnp.maximum(magnitude_G, 0)          # empty groups: -inf -> 0
  floor_G = rounding_floor(magnitude_G, dtype)
  spread_G = (count_G > ddof) & (var_G > floor_G * floor_G)
  var_G = jnp.where(spread_G, var_G, 0)
  centered = jnp.where(spread_G[group_ids_N], centered, 0)
  std_G = jnp.sqrt(var_G)
  return GroupMoments(centered=centered, std=std_G[group_ids_N],
                      count=count_G[group_ids_N],
                      mean_G=jnp.where(count_G > 0, shift_G + mean_d_G, 0),
                      var_G=var_G, count_G=count_G, magnitude_G=magnitude_G)


def safe_divide(num: Array, den: Array, where: Array | None = None) -> Array:
  """num / den where den > 0 (and `where`), else 0."""
  ok = den > 0
  if where is not None:
    ok = ok & where
  return jnp.where(ok, num / jnp.where(ok, den, 1), 0)


def group_zscore(x: Array, mask: Array, group_ids_N: Array, num_groups: int, *,
                 eps: float, ddof: int = 1, scale: bool = True,
                 magnitude: Array | None = None) -> Array:
  """(x - mean_g x) / (std_g x + eps); 0 where masked out, in groups with
  count <= ddof, and where the std is at the rounding level (also with
  eps = 0). With scale=False: x - mean_g x."""
  return group_zscore_with_magnitude(x, mask, group_ids_N, num_groups, eps=eps, ddof=ddof,
                                     scale=scale, magnitude=magnitude)[0]


def group_zscore_with_magnitude(x: Array, mask: Array, group_ids_N: Array, num_groups: int, *,
                                eps: float, ddof: int = 1, scale: bool = True,
                                magnitude: Array | None = None) -> tuple[Array, Array]:
  """`group_zscore` and the magnitude of its rounding error's source: the
  group's largest input magnitude scaled as the z-score is (0 where z is 0).
  Pass the sum of these over the terms of a sum of z-scores as the
  `magnitude` of a later statistic of that sum."""
  m = group_moments(x, mask, group_ids_N, num_groups, ddof, magnitude)
  mag_N = m.magnitude_G[group_ids_N]
  if not scale:
    return m.centered, jnp.where(m.std > 0, mag_N, 0)
  ok = m.count > ddof
  z = safe_divide(m.centered, m.std + eps, ok)
  return z, safe_divide(mag_N, m.std + eps, ok & (m.std > 0))


def batch_moments(x: Array, mask: Array, ddof: int = 1,
                  weights: Array | None = None,
                  magnitude: Array | None = None) -> tuple[Array, Array, Array]:
  """Mean and variance over all masked-in entries (optionally weighted).

  With weights w (e.g. response lengths), mean = sum(w x) / sum(w) and
  var = sum(w (x - mean)^2) / sum(w) * W / (W - ddof) with W = sum(w)
  (verl's masked_var over tokens). A std at or below the rounding floor of
  the largest `magnitude` (default |x|) gives var 0. Returns (mean, var,
  total weight).
  """
  mask = _expand(mask, x)
  dtype = x.dtype
  w = mask.astype(dtype) if weights is None else jnp.where(mask, _expand(weights, x), 0).astype(dtype)
  xm = jnp.where(mask, x, 0)
  total = w.sum()
  mean = jnp.where(total > 0, (w * xm).sum() / jnp.maximum(total, 1e-30), 0)
  dev = jnp.where(mask, x - mean, 0)
  var = (w * dev * dev).sum() / jnp.maximum(total, 1e-30)
  var = jnp.where(total > ddof, var * total / jnp.maximum(total - ddof, 1e-30), 0)
  mag = jnp.abs(xm) if magnitude is None else jnp.where(mask, jnp.abs(_expand(magnitude, x)), 0)
  floor = rounding_floor(mag.max(initial=0), dtype)
  var = jnp.where(var > floor * floor, var, 0)
  return mean, var, total


def batch_center(x: Array, mask: Array, mean: Array, var: Array) -> Array:
  """x - mean on masked-in entries, 0 where masked out or the batch is
  constant to rounding (var 0 from `batch_moments`)."""
  return jnp.where(_expand(mask, x) & (var > 0), x - mean, 0)


def batch_zscore(x: Array, mask: Array, *, eps: float, ddof: int = 1,
                 scale: bool = True, magnitude: Array | None = None) -> Array:
  """(x - mean) / (std + eps) over the masked-in entries of the whole batch
  (0 where the std is at the rounding level, also with eps = 0)."""
  mean, var, total = batch_moments(x, mask, ddof, magnitude=magnitude)
  centered = batch_center(x, mask, mean, var)
  if not scale:
    return centered
  return safe_divide(centered, jnp.sqrt(var) + eps, _expand(mask, x) & (total > ddof))


def combine_group_ids(group_ids_N: Array, sub_ids_N: Array, num_sub: int) -> Array:
  """Group key (group, sub) as one id in [0, num_groups * num_sub)."""
  return group_ids_N * num_sub + sub_ids_N
