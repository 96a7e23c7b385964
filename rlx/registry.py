"""Name -> function registries.

Everything a config names (estimators, loss terms, reward functions, tasks,
optimizers, ...) is looked up here, so users extend rlx by registering a
function in their own file:

    from rlx.registry import ESTIMATORS

    @ESTIMATORS.register("my_estimator")
    def my_estimator(...): ...

An unknown name raises a KeyError that lists the valid choices.
"""
from __future__ import annotations

import difflib
from typing import Any, Callable, Iterator


class Registry:
  """A named collection of functions (or classes) selectable from configs."""

  def __init__(self, kind: str):
    self.kind = kind
    self._items: dict[str, Any] = {}

  def register(self, name: str | None = None, *, overwrite: bool = False) -> Callable[[Any], Any]:
    """Decorator: `@REG.register("name")` or `@REG.register()` (uses __name__)."""

    def deco(fn: Any) -> Any:
      key = name or fn.__name__
      if key in self._items and not overwrite and self._items[key] is not fn:
        raise ValueError(
            f"{self.kind} {key!r} is already registered; pass overwrite=True to replace it.")
      self._items[key] = fn
      return fn

    return deco

  def get(self, name: str) -> Any:
    try:
      return self._items[name]
    except KeyError:
      raise KeyError(self.unknown_message(name)) from None

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
