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

Options are keyword-only arguments with defaults; `compute_advantages` and
`apply_filter` check config options against them by name.
"""
import inspect
from typing import Any, Callable, Mapping

from rlx.registry import Registry

ESTIMATORS = Registry("advantage estimator")
FILTERS = Registry("sample filter")


def option_defaults(fn: Callable[..., Any], skip: tuple[str, ...] = ("num_groups",)) -> dict[str, Any]:
  """Keyword-only options of a registered function -> default (inspect.Parameter.empty if required)."""
  params = inspect.signature(fn).parameters.values()
  return {p.name: p.default for p in params
          if p.kind == inspect.Parameter.KEYWORD_ONLY and p.name not in skip}


def _format_options(defaults: Mapping[str, Any]) -> str:
  if not defaults:
    return "(none)"
  return ", ".join(k if v is inspect.Parameter.empty else f"{k}={v!r}"
                   for k, v in defaults.items())


def check_options(registry: Registry, name: str, options: Mapping[str, Any],
                  skip: tuple[str, ...] = ("num_groups",)) -> Callable[..., Any]:
  """Looks up `name` and checks `options` against its keyword-only arguments.

  Raises KeyError for an unknown name (listing valid names) and TypeError for
  unknown or missing options (naming the function and its valid options).
  """
  fn = registry.get(name)
  defaults = option_defaults(fn, skip)
  unknown = sorted(set(options) - set(defaults))
  if unknown:
    raise TypeError(
        f"Unknown option(s) {', '.join(map(repr, unknown))} for {registry.kind} "
        f"{name!r}. Valid options: {_format_options(defaults)}.")
  missing = sorted(k for k, v in defaults.items()
                   if v is inspect.Parameter.empty and k not in options)
  if missing:
    raise TypeError(
        f"{registry.kind} {name!r} requires option(s) {', '.join(map(repr, missing))}. "
        f"Valid options: {_format_options(defaults)}.")
  for k, v in options.items():  # a string where a number or a flag is expected (e.g. eps='abc')
    d = defaults[k]
    if isinstance(d, (bool, int, float)) and isinstance(v, str):
      raise TypeError(f"{registry.kind} {name!r}: option {k}={v!r} must be "
                      f"{'True or False' if isinstance(d, bool) else 'a number'} "
                      f"(default {d!r}).")
  return fn


def check_choice(value: Any, choices: tuple[Any, ...], option: str, owner: str) -> None:
  """Raises ValueError naming the owner and the valid choices."""
  if value not in choices:
    raise ValueError(f"{owner}: option {option}={value!r} is not one of "
                     f"{', '.join(map(repr, choices))}.")
