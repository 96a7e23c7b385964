"""Hypothesis profiles of the test suite.

ci (default): derandomized, so the README's test command draws the same cases
every run. stress: random seeds and RLX_STRESS_FACTOR (default 20) times the
examples of every property test, for developers:

    RLX_HYPOTHESIS_PROFILE=stress pytest -n 2 -q tests -k "propert or hypothesis"

A property test asks for `examples(n)`: n under ci, n * factor under stress.
"""
import os

from hypothesis import HealthCheck, settings

BASE = 100
_COMMON = dict(deadline=None, database=None, print_blob=True,
               suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("ci", derandomize=True, max_examples=BASE, **_COMMON)
settings.register_profile(
    "stress", derandomize=False,
    max_examples=BASE * int(os.environ.get("RLX_STRESS_FACTOR", "20")), **_COMMON)


def load() -> None:
  settings.load_profile(os.environ.get("RLX_HYPOTHESIS_PROFILE", "ci"))


def examples(n: int) -> int:
  """n examples under the ci profile, scaled by the loaded profile otherwise."""
  return max(1, n * settings.default.max_examples // BASE)
