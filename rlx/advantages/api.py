"""`compute_advantages` and `apply_filter`: the entry points the trainer calls."""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from rlx.advantages import diagnostics as diag_lib
from rlx.advantages import segments as seg
from rlx.advantages.inputs import AdvantageInputs
from rlx.advantages.registry import ESTIMATORS, FILTERS

Array = jax.Array


def _check_num_groups(num_groups: Any) -> int:
  if isinstance(num_groups, bool) or not isinstance(num_groups, (int, np.integer)):
    raise TypeError(f"num_groups must be a static Python int, got {type(num_groups).__name__}.")
  if num_groups < 1:
    raise ValueError(f"num_groups must be >= 1, got {num_groups}.")
  return int(num_groups)


def estimator_options(name: str) -> dict[str, Any]:
  """Option names of a registered estimator -> defaults."""
  return ESTIMATORS.options(name)


def filter_options(name: str) -> dict[str, Any]:
  """Option names of a registered sample filter -> defaults."""
  return FILTERS.options(name)


def compute_advantages(name: str, inputs: AdvantageInputs, num_groups: int, *,
                       group_by_agent: bool = False, num_agents: int | None = None,
                       diagnostics: bool = True, resolution_rows: int | None = 16384,
                       **options: Any) -> tuple[Array, dict[str, Array]]:
  """Runs the advantage estimator `name` (jittable; call it inside jit).

  Args:
    name: registered estimator (see ESTIMATORS.names()).
    inputs: AdvantageInputs of the batch.
    num_groups: static number of prompt groups (group ids lie in [0, num_groups)).
    group_by_agent: Dr. MAS grouping: key (prompt, agent id) for any estimator;
      needs inputs.agent_ids_N and num_agents.
    num_agents: static number of agents (with group_by_agent).
    diagnostics: add the docs/methods.md section-7 metrics (unused outputs cost
      nothing under jit, so False only matters outside jit).
    resolution_rows: row budget of the group-level diagnostics (constant-group
      share, correlations, resolution); groups beyond it are not counted (None: all).
    **options: the estimator's options; unknown names raise a TypeError that
      lists the valid ones.

  Returns:
    (A, metrics): A is float [N] (or [N, T] / [N, U] for token- or turn-level
    estimators), 0 on invalid rows; metrics is a flat dict of scalars:
    "estimator/..." from the estimator plus section-7 diagnostics.
  """
  num_groups = _check_num_groups(num_groups)
  if not group_by_agent and num_agents is not None:
    options["num_agents"] = num_agents  # e.g. the "agent_grouping" estimator's option.
  fn = ESTIMATORS.check_options(name, options)
  if group_by_agent:
    if num_agents is None:
      raise ValueError("group_by_agent=True needs num_agents (static int).")
    agents = inputs.require("agent_ids_N", "group_by_agent").astype(jnp.int32)
    inputs = inputs.replace(group_ids_N=seg.combine_group_ids(inputs.group_ids_N, agents,
                                                              int(num_agents)))
    num_groups *= int(num_agents)
  adv, est_diag = fn(inputs, num_groups=num_groups, **options)
  valid = inputs.valid_N.reshape(inputs.valid_N.shape + (1,) * (adv.ndim - 1))
  adv = jnp.where(valid, adv, 0)
  est_diag = dict(est_diag)
  contrib = est_diag.pop("contrib_NK", None)
  sum_scale = est_diag.pop("sum_scale_N", None)
  sum_mask = est_diag.pop("sum_mask_N", None)
  metrics = {f"estimator/{k}": v for k, v in est_diag.items()}
  if diagnostics:
    metrics.update(diag_lib.all_diagnostics(inputs, num_groups, adv, contrib, resolution_rows,
                                            sum_scale, sum_mask))
  return adv, metrics


def apply_filter(name: str, inputs: AdvantageInputs, num_groups: int,
                 **options: Any) -> tuple[Array, Array]:
  """Runs the sample filter `name`: returns (keep_N bool, number of kept groups)."""
  num_groups = _check_num_groups(num_groups)
  fn = FILTERS.check_options(name, options)
  return fn(inputs, num_groups=num_groups, **options)
