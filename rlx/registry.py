"""Name -> function registries, and the one checker of config options.

Everything a config names (estimators, filters, loss terms, reward functions,
reward transforms, tasks, optimizers, ...) is looked up here, so users extend
rlx by registering a function in their own file:

    from rlx.advantages import ESTIMATORS

    @ESTIMATORS.register("my_estimator")
    def my_estimator(inputs, *, num_groups, scale=1.0): ...

An entry's options are its parameters after the `inputs` leading ones (minus
`skip`); `Registry.check_options(name, options)` checks a config's options
against them before any compute. Every error names the registry, the entry,
the bad option and the valid ones, in one format:

    advantage estimator 'gdpo': unknown option 'epss'. Valid options: eps=1e-06, ...
    loss term 'kl': option estimator='k9' is not one of 'k1', 'k2', 'k3'.

An unknown name raises a KeyError that lists the valid choices.
"""
from __future__ import annotations

import difflib
import inspect
from typing import Any, Callable, Iterable, Iterator, Mapping

_EMPTY = inspect.Parameter.empty


def check_choice(value: Any, choices: Iterable[Any], option: str, owner: str) -> None:
  """ValueError "OWNER: option OPTION=VALUE is not one of A, B." if value is not a choice."""
  choices = tuple(choices)
  if value not in choices:
    raise ValueError(f"{owner}: option {option}={value!r} is not one of "
                     f"{', '.join(map(repr, choices))}.")


def format_options(defaults: Mapping[str, Any]) -> str:
  """'a, b=1' for {a: required, b: 1}; '(none)' when empty."""
  if not defaults:
    return "(none)"
  return ", ".join(k if v is _EMPTY else f"{k}={v!r}" for k, v in defaults.items())


def _option_params(fn: Callable[..., Any], inputs: int, skip: Iterable[str],
                   data_kwargs: str | None) -> list[inspect.Parameter] | None:
  try:
    params = list(inspect.signature(fn).parameters.values())
  except (TypeError, ValueError):  # a builtin or C callable
    return None
  if any(p.kind is inspect.Parameter.VAR_KEYWORD and p.name != data_kwargs for p in params):
    return None
  named = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
  skip = tuple(skip)
  return [p for p in params[inputs:] if p.kind in named and p.name not in skip]


def option_defaults(fn: Callable[..., Any], *, inputs: int = 1, skip: Iterable[str] = (),
                    data_kwargs: str | None = None) -> dict[str, Any] | None:
  """{option: default (inspect.Parameter.empty if none)} of `fn`: its named
  parameters after the first `inputs` ones, minus `skip`. None (options not
  checkable) if `fn` has no signature or takes `**kwargs` other than
  `**data_kwargs` (a catch-all for data, e.g. a reward's dataset columns)."""
  params = _option_params(fn, inputs, skip, data_kwargs)
  return None if params is None else {p.name: p.default for p in params}


def check_entry_options(kind: str, name: str, fn: Callable[..., Any], options: Mapping[str, Any],
                        *, inputs: int = 1, skip: Iterable[str] = (), reserved: Iterable[str] = (),
                        data_kwargs: str | None = None,
                        choices: Mapping[str, Iterable[Any]] | None = None) -> None:
  """Checks `options` of entry `name` (a `kind`, e.g. 'loss term') against the
  parameters of `fn`: unknown options, missing keyword-only ones, a string
  where a number or a flag is expected, and the values of `choices` ({option:
  valid values}; default `fn.option_choices`, set at registration). `reserved` options are
  accepted and not passed to `fn` (e.g. a loss term's coef). Raises TypeError
  / ValueError with the message format of this module's docstring."""
  who = f"{kind} {name!r}"
  params = _option_params(fn, inputs, skip, data_kwargs)
  if params is not None:
    defaults = {p.name: p.default for p in params}
    shown = ", ".join([*reserved, format_options(defaults)] if reserved else
                      [format_options(defaults)])
    unknown = sorted(set(options) - set(defaults) - set(reserved))
    if unknown:
      raise TypeError(f"{who}: unknown option{'s' if len(unknown) > 1 else ''} "
                      f"{', '.join(map(repr, unknown))}. Valid options: {shown}.")
    missing = sorted(p.name for p in params if p.default is _EMPTY and p.name not in options
                     and p.kind is inspect.Parameter.KEYWORD_ONLY)
    if missing:
      raise TypeError(f"{who}: missing required option{'s' if len(missing) > 1 else ''} "
                      f"{', '.join(map(repr, missing))}. Valid options: {shown}.")
    for k, v in options.items():  # a string where a number or a flag is expected (eps='abc')
      d = defaults.get(k, _EMPTY)
      if isinstance(d, (bool, int, float)) and isinstance(v, str):
        raise TypeError(f"{who}: option {k}={v!r} must be "
                        f"{'True or False' if isinstance(d, bool) else 'a number'} "
                        f"(default {d!r}).")
  choices = getattr(fn, "option_choices", {}) if choices is None else choices
  for opt, valid in choices.items():
    if opt in options:
      check_choice(options[opt], valid, opt, who)


class Registry:
  """A named collection of functions (or classes) selectable from configs.

  `inputs`, `skip`, `reserved` and `data_kwargs` say which parameters of an
  entry are its options (see `option_defaults` and `check_entry_options`).
  """

  def __init__(self, kind: str, *, inputs: int = 1, skip: Iterable[str] = (),
               reserved: Iterable[str] = (), data_kwargs: str | None = None):
    self.kind = kind
    self.inputs, self.skip, self.reserved = inputs, tuple(skip), tuple(reserved)
    self.data_kwargs = data_kwargs
    self._items: dict[str, Any] = {}

  def register(self, name: str | None = None, *, overwrite: bool = False,
               choices: Mapping[str, Iterable[Any]] | None = None) -> Callable[[Any], Any]:
    """Decorator: `@REG.register("name")` or `@REG.register()` (uses __name__).
    `choices` ({option: valid values}) are checked by `check_options`."""

    def deco(fn: Any) -> Any:
      key = name or fn.__name__
      if key in self._items and not overwrite and self._items[key] is not fn:
        raise ValueError(
            f"{self.kind} {key!r} is already registered; pass overwrite=True to replace it.")
      if choices:
        fn.option_choices = {k: tuple(v) for k, v in choices.items()}
      self._items[key] = fn
      return fn

    return deco

  def get(self, name: str) -> Any:
    try:
      return self._items[name]
    except KeyError:
      raise KeyError(self.unknown_message(name)) from None

  def options(self, name: str) -> dict[str, Any] | None:
    """{option: default} of entry `name` (None: it takes any **kwargs)."""
    return option_defaults(self._entry_fn(self.get(name)), inputs=self.inputs, skip=self.skip,
                           data_kwargs=self.data_kwargs)

  def check_options(self, name: str, options: Mapping[str, Any],
                    fn: Callable[..., Any] | None = None) -> Any:
    """Looks up `name` (or takes `fn`, e.g. a callable from a config) and checks
    `options` against it; returns the entry."""
    entry = self.get(name) if fn is None else fn
    check_entry_options(self.kind, name, self._entry_fn(entry), options, inputs=self.inputs,
                        skip=self.skip, reserved=self.reserved, data_kwargs=self.data_kwargs,
                        choices=getattr(entry, "option_choices", {}))
    return entry

  @staticmethod
  def _entry_fn(entry: Any) -> Any:
    return entry.__init__ if inspect.isclass(entry) else entry  # a class: its constructor

  def unknown_message(self, name: str) -> str:
    close = difflib.get_close_matches(str(name), self._items, n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    return (f"Unknown {self.kind} {name!r}.{hint} Valid choices: "
            f"{', '.join(sorted(self._items))}.")

  def __contains__(self, name: object) -> bool:
    return name in self._items

  def __iter__(self) -> Iterator[str]:
    return iter(sorted(self._items))

  def names(self) -> list[str]:
    return sorted(self._items)

  def __repr__(self) -> str:
    return f"Registry({self.kind!r}, {self.names()})"


def check_options(registry: Registry, name: str, options: Mapping[str, Any]) -> Any:
  """`registry.check_options(name, options)`: the entry, its options checked."""
  return registry.check_options(name, options)
