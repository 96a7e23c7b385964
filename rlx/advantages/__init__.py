"""Group reward normalization: advantage estimators, sample filters, diagnostics.

    from rlx.advantages import AdvantageInputs, compute_advantages
    inputs = AdvantageInputs.create(rewards_NK, group_ids_N, reward_names=("acc", "fmt"))
    A_N, metrics = compute_advantages("gdpo", inputs, num_groups=16, eps=1e-4)

Estimators, filters and reward transforms are looked up by name in ESTIMATORS /
FILTERS / TRANSFORMS; register
your own with `@ESTIMATORS.register("name")` (see registry.py for signatures).
"""
from rlx.advantages.registry import ESTIMATORS, FILTERS  # noqa: I001
from rlx.advantages.inputs import COLUMN_FIELDS, LOOP_FIELDS, AdvantageInputs, column_inputs
from rlx.advantages import segments
from rlx.advantages import estimators
from rlx.advantages import variants
from rlx.advantages import multi_reward
from rlx.advantages import filters
from rlx.advantages import diagnostics
from rlx.advantages import transforms
from rlx.advantages.transforms import TRANSFORMS, apply_transforms
from rlx.advantages.variants import ReferenceStats, fit_reference_stats
from rlx.advantages.api import (apply_filter, compute_advantages, estimator_options,
                                filter_options)

__all__ = [
    "COLUMN_FIELDS", "LOOP_FIELDS", "ESTIMATORS", "FILTERS", "TRANSFORMS", "AdvantageInputs", "apply_transforms",
    "column_inputs", "transforms", "ReferenceStats", "apply_filter",
    "compute_advantages", "diagnostics", "estimator_options", "estimators",
    "filter_options", "filters", "fit_reference_stats", "multi_reward", "segments", "variants",
]
