"""The one ensemble rule of rlx (reward-model ensembles and the `ensemble`
transform): a pure jnp function that rewards/ and advantages/ both use."""
from __future__ import annotations

import jax
import jax.numpy as jnp

from rlx.registry import check_choice

ENSEMBLE_AGGREGATIONS = ("mean", "median", "min", "mean_minus_std")


def ensemble_aggregate(scores_NM: jax.Array, method: str = "mean", lam: float = 1.0) -> jax.Array:
  """Aggregates M reward-model scores per completion [N, M] -> [N]: mean,
  median, min or mean - lam * std (population std over the ensemble). The one
  ensemble rule of rlx: a missing score (NaN) is ignored, so a completion gets
  the aggregate of the models that scored it (NaN if none did)."""
  check_choice(method, ENSEMBLE_AGGREGATIONS, "method", "ensemble_aggregate")
  s = jnp.asarray(scores_NM)
  if method == "median":
    return jnp.nanmedian(s, axis=-1)
  if method == "min":
    return jnp.nanmin(s, axis=-1)
  mean = jnp.nanmean(s, axis=-1)
  if method == "mean":
    return mean
  return mean - lam * jnp.nanstd(s, axis=-1)


