"""Loss-term registry and the weighted total.

A loss term is a pure function

    term(inputs: LossInputs, *, option=default, ...) -> (scalar loss, {name: scalar})

registered in `LOSS_TERMS`. Its keyword arguments are its options; options are
static Python values (the trainer closes over them and jits). A config lists
terms by name:

    terms = {'pg': {'clip_low': 0.2, 'clip_high': 0.28},
             'kl': {'coef': 0.04, 'estimator': 'k3'},
             'nll_correct': {'coef': 0.1}}
    loss, metrics = total_loss(terms, inputs)      # sum_k coef_k * term_k

Options are checked against the term's keyword arguments, and string options
against the valid values given at registration (`choices`), once by
`check_terms` (the trainer calls it at start-up; `total_loss` does not check).
Each entry may give `coef` (the term's default if omitted: 1.0 for objectives
such as `pg` and `drpo`; regularizers `kl`, `entropy`, `nll_correct` require
it) and `term` (the registry name, when the key is only a label, e.g. two KL
terms `{'kl_ref': {'term': 'kl', ...}, 'kl_old': {'term': 'kl', ...}}`).
Metrics come back prefixed by the key: `pg/clip_frac_high`, `kl/loss`, ...
and `loss` holds the total.

A user adds a term in their own file:

    from rlx.losses import LOSS_TERMS

    @LOSS_TERMS.register("my_term")
    def my_term(inputs, *, scale=1.0):
      return scale * ..., {}
"""
from __future__ import annotations

from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp

from rlx.losses.inputs import LossInputs
from rlx.registry import Registry

Array = jax.Array
TermFn = Callable[..., tuple[Array, dict[str, Array]]]

LOSS_TERMS = Registry("loss term", reserved=("coef", "term"))


def loss_term(name: str, *, default_coef: float | None = 1.0,
              choices: Mapping[str, tuple[Any, ...]] | None = None) -> Callable[[TermFn], TermFn]:
  """Registers a term; `default_coef=None` makes `coef` mandatory in configs.

  `choices` maps string options to their valid values, checked by
  `check_terms` before any data exists.
  """

  def deco(fn: TermFn) -> TermFn:
    fn.default_coef = default_coef
    return LOSS_TERMS.register(name, choices=choices)(fn)

  return deco


def term_options(name: str) -> dict[str, Any] | None:
  """{option: default} of the registered term `name`; None if it takes **kwargs."""
  return LOSS_TERMS.options(name)


def _as_dict(x: Any) -> dict[str, Any]:
  if x is None:
    return {}
  if hasattr(x, "to_dict"):  # ml_collections.ConfigDict
    x = x.to_dict()
  return dict(x)


def resolve_term(key: str, spec: Mapping[str, Any] | None) -> tuple[TermFn, float, dict[str, Any]]:
  """(function, coefficient, options) of one config entry (not checked: see check_terms)."""
  spec = _as_dict(spec)
  fn = LOSS_TERMS.get(spec.pop("term", key))
  coef = spec.pop("coef", getattr(fn, "default_coef", 1.0))
  return fn, coef, spec


def check_terms(terms: Mapping[str, Mapping[str, Any]]) -> None:
  """Validates a terms config (names, options, choices, coefs) without any data."""
  if not _as_dict(terms):
    raise ValueError("The loss config lists no terms. Valid terms: "
                     f"{', '.join(LOSS_TERMS.names())}.")
  for key, spec in _as_dict(terms).items():
    spec = _as_dict(spec)
    name = spec.get("term", key)
    if name not in LOSS_TERMS:
      raise KeyError(LOSS_TERMS.unknown_message(name) + f" (config key {key!r})")
    fn = LOSS_TERMS.get(name)
    label = key if name == key else f"{key}' ('{name}"
    if "coef" not in spec and getattr(fn, "default_coef", 1.0) is None:
      raise ValueError(f"{LOSS_TERMS.kind} '{label}': missing required option 'coef' "
                       "(it has no default).")
    LOSS_TERMS.check_options(label, {k: v for k, v in spec.items() if k != "term"}, fn=fn)


def total_loss(terms: Mapping[str, Mapping[str, Any]],
               inputs: LossInputs) -> tuple[Array, dict[str, Array]]:
  """sum_k coef_k * term_k(inputs, **options_k), and all metrics prefixed by key.

  `terms` is checked by `check_terms` first (the trainer does at start-up)."""
  total = jnp.zeros((), inputs.logp_NT.dtype)
  metrics: dict[str, Array] = {}
  for key, spec in _as_dict(terms).items():
    fn, coef, options = resolve_term(key, spec)
    loss, term_metrics = fn(inputs, **options)
    total = total + coef * loss
    metrics[f"{key}/loss"] = loss
    for k, v in term_metrics.items():
      metrics[f"{key}/{k}"] = v
  metrics["loss"] = total
  return total, metrics
