"""Masked segment statistics over prompt groups (no Python loops over groups).

All functions take a value array whose leading axis is N (completions), an
equally shaped boolean mask, integer group ids [N] in [0, num_groups) and a
static `num_groups`. Trailing axes (e.g. K rewards) are handled at once.

Group means and variances are computed on values shifted by the value of one
member of the group (its first valid row), so a group whose values are all
equal gives exactly zero centered values and zero variance, whatever the
float rounding of its mean (if that member lacks the value, the shift is 0
and equality holds up to rounding).
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

Array = jax.Array


def _expand(mask: Array, like: Array) -> Array:
  return jnp.broadcast_to(mask.reshape(mask.shape + (1,) * (like.ndim - mask.ndim)), like.shape)


def segment_sum(x: Array, group_ids_N: Array, num_groups: int) -> Array:
  return jax.ops.segment_sum(x, group_ids_N, num_groups)


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


def group_moments(x: Array, mask: Array, group_ids_N: Array, num_groups: int,
                  ddof: int = 1) -> GroupMoments:
  """Mean, variance and centered values per group, ignoring masked-out entries.

  Args:
    x: [N, ...] values (NaN allowed where mask is False).
    mask: bool, same shape as x (or [N], broadcast).
    group_ids_N: int [N].
    num_groups: static number of groups.
    ddof: delta degrees of freedom of the variance (1: sample variance).
  """
  mask = _expand(mask, x)
  dtype = x.dtype
  # Shift by the value of one member (the first valid row) of each group.
  row_mask = mask.reshape(mask.shape[0], -1).any(-1)
  n = x.shape[0]
  first_G = jax.ops.segment_min(jnp.where(row_mask, jnp.arange(n), n), group_ids_N, num_groups)
  first_G = jnp.minimum(first_G, n - 1)
  shift_G = jnp.where(mask[first_G], x[first_G], 0).astype(dtype)
  d = jnp.where(mask, x - shift_G[group_ids_N], 0).astype(dtype)
  maskf = mask.astype(dtype)
  count_G = jax.ops.segment_sum(maskf, group_ids_N, num_groups)
  mean_d_G = jax.ops.segment_sum(d, group_ids_N, num_groups) / jnp.maximum(count_G, 1)
  centered = jnp.where(mask, d - mean_d_G[group_ids_N], 0)
  var_G = (jax.ops.segment_sum(centered * centered, group_ids_N, num_groups)
           / jnp.maximum(count_G - ddof, 1))
  var_G = jnp.where(count_G > ddof, var_G, 0)
  std_G = jnp.sqrt(var_G)
  return GroupMoments(centered=centered, std=std_G[group_ids_N],
                      count=count_G[group_ids_N],
                      mean_G=jnp.where(count_G > 0, shift_G + mean_d_G, 0),
                      var_G=var_G, count_G=count_G)


def safe_divide(num: Array, den: Array, where: Array | None = None) -> Array:
  """num / den where den > 0 (and `where`), else 0."""
  ok = den > 0
  if where is not None:
    ok = ok & where
  return jnp.where(ok, num / jnp.where(ok, den, 1), 0)


def group_zscore(x: Array, mask: Array, group_ids_N: Array, num_groups: int, *,
                 eps: float, ddof: int = 1, scale: bool = True) -> Array:
  """(x - mean_g x) / (std_g x + eps); 0 where masked out, in groups with
  count <= ddof, and where std + eps == 0. With scale=False: x - mean_g x."""
  m = group_moments(x, mask, group_ids_N, num_groups, ddof)
  if not scale:
    return m.centered
  return safe_divide(m.centered, m.std + eps, m.count > ddof)


def batch_moments(x: Array, mask: Array, ddof: int = 1,
                  weights: Array | None = None) -> tuple[Array, Array, Array]:
  """Mean and variance over all masked-in entries (optionally weighted).

  With weights w (e.g. response lengths), mean = sum(w x) / sum(w) and
  var = sum(w (x - mean)^2) / sum(w) * W / (W - ddof) with W = sum(w)
  (verl's masked_var over tokens). Returns (mean, var, total weight).
  """
  mask = _expand(mask, x)
  w = mask.astype(x.dtype) if weights is None else jnp.where(mask, _expand(weights, x), 0).astype(x.dtype)
  total = w.sum()
  mean = jnp.where(total > 0, (w * jnp.where(mask, x, 0)).sum() / jnp.maximum(total, 1e-30), 0)
  dev = jnp.where(mask, x - mean, 0)
  var = (w * dev * dev).sum() / jnp.maximum(total, 1e-30)
  var = jnp.where(total > ddof, var * total / jnp.maximum(total - ddof, 1e-30), 0)
  return mean, var, total


def batch_zscore(x: Array, mask: Array, *, eps: float, ddof: int = 1,
                 scale: bool = True) -> Array:
  """(x - mean) / (std + eps) over the masked-in entries of the whole batch."""
  mean, var, total = batch_moments(x, mask, ddof)
  centered = jnp.where(_expand(mask, x), x - mean, 0)
  if not scale:
    return centered
  return safe_divide(centered, jnp.sqrt(var) + eps, _expand(mask, x) & (total > ddof))


def combine_group_ids(group_ids_N: Array, sub_ids_N: Array, num_sub: int) -> Array:
  """Group key (group, sub) as one id in [0, num_groups * num_sub)."""
  return group_ids_N * num_sub + sub_ids_N
