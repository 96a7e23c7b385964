"""Sample filters (dynamic sampling): DAPO, per-reward DAPO, LightningRL."""
import jax
import numpy as np
import pytest

from rlx.advantages import FILTERS, AdvantageInputs, apply_filter, filter_options


def run(name, r, g, num_groups, valid=None, **options):
  inputs = AdvantageInputs.create(np.asarray(r, np.float32), g, valid_N=valid,
                                  reward_names=("acc", "speed")[:np.shape(r)[1]])
  keep, count = jax.jit(lambda i: apply_filter(name, i, num_groups, **options))(inputs)
  return np.asarray(keep).tolist(), int(count)


def test_dapo_drops_constant_groups():
  # Groups: 0 mixed, 1 all correct, 2 all wrong, 3 single member, 4 empty.
  r = [[1], [0], [1], [1], [0], [0], [1]]
  g = [0, 0, 1, 1, 2, 2, 3]
  keep, count = run("dapo", r, g, 5)
  assert keep == [True, True, False, False, False, False, False]
  assert count == 1


def test_dapo_combined_reward_and_missing_and_padding():
  # s = r0 + r1 is constant (1, 1) in group 0 although each reward varies.
  r = [[1, 0], [0, 1], [1, np.nan], [0, np.nan], [1, 1], [5, 5]]
  g = [0, 0, 1, 1, 2, 2]
  keep, count = run("dapo", r, g, 3, valid=[1, 1, 1, 1, 1, 0])
  assert keep == [False, False, True, True, False, False]   # group 2: one valid row
  assert count == 1
  # Per-reward variant: group 0 varies in every reward; group 1 in acc.
  keep, count = run("dapo_per_reward", r, g, 3, valid=[1, 1, 1, 1, 1, 0])
  assert keep == [True, True, True, True, False, False] and count == 2
  # Only the second reward selected: group 1 has it missing -> constant.
  keep, count = run("dapo_per_reward", r, g, 3, rewards=["speed"])
  assert keep == [True, True, False, False, True, True] and count == 2


def test_lightningrl_filter():
  # Group 0: all wrong -> drop. Group 1: mixed, speed range .5 -> keep.
  # Group 2: all correct, speed range .3 -> keep. Group 3: speed range .005 -> drop.
  r = [[0, .1], [0, .9], [1, .2], [0, .7], [1, .1], [1, .4], [1, .5], [0, .505]]
  g = [0, 0, 1, 1, 2, 2, 3, 3]
  keep, count = run("lightningrl", r, g, 4)
  assert keep == [False, False, True, True, True, True, False, False]
  assert count == 2


def test_filter_registry_and_options():
  assert {"dapo", "dapo_per_reward", "lightningrl"} <= set(FILTERS.names())
  assert filter_options("lightningrl") == {"accuracy": 0, "speed": 1, "correct_threshold": 0.5,
                                           "min_speed_range": 0.01}
  inputs = AdvantageInputs.create(np.zeros((2, 1), np.float32), [0, 0])
  with pytest.raises(TypeError, match=r"sample filter 'dapo': unknown option 'threshold'"
                     r".*tol=0.0"):
    apply_filter("dapo", inputs, 1, threshold=1)
  with pytest.raises(KeyError, match="Valid choices"):
    apply_filter("dynamic", inputs, 1)
