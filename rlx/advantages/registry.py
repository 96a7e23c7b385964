"""Registries of advantage estimators and sample filters.

An advantage estimator has the signature

    fn(inputs: AdvantageInputs, *, num_groups: int, **options) -> (A, diagnostics)

where `A` is float [N] (or token-level [N, T]) and `diagnostics` a dict of
scalars. Optional keys consumed by `compute_advantages` for the section-7
|A| shares: "contrib_NK" (each reward's additive part of A, [N, K], or a
function of row indices returning those rows' parts) or "sum_scale_N" /
"sum_mask_N" (for A_i = c_i (s_i - mean_g s): c and the row mask).

A sample filter has the signature

    fn(inputs: AdvantageInputs, *, num_groups: int, **options) -> (keep_N, num_kept_groups)

Options are keyword arguments with defaults; `compute_advantages` and
`apply_filter` check config options against them by name (rlx/registry.py).
"""
from rlx.registry import Registry, check_choice, check_options  # noqa: F401  (used by estimators)

ESTIMATORS = Registry("advantage estimator", skip=("num_groups",))
FILTERS = Registry("sample filter", skip=("num_groups",))
