"""`AdvantageInputs`: everything an advantage estimator may read, as a pytree.

Shapes: N completions, K rewards, T response tokens, P phases, U turns,
M pairwise comparison slots. Every optional field is None when absent.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class AdvantageInputs:
  """Batch of rewards and grouping information (a jax pytree).

  Attributes:
    rewards_NK: float [N, K]; NaN marks a missing reward (masked out of every
      statistic).
    group_ids_N: int [N] in [0, num_groups): prompt group of each completion.
    valid_N: bool [N]; False rows are padding (advantage 0, no statistics).
    weights_K: float [K] per-reward weights.
    lengths_N: optional int/float [N] response lengths in tokens.
    task_ids_N: optional int [N] task of each completion (TMN).
    agent_ids_N: optional int [N] agent of each completion (Dr. MAS grouping).
    phase_mask_NZT: optional bool [N, Z, T]: token t of completion i belongs to
      phase z (F-GRPO).
    turn_scores_NU: optional float [N, U] per-turn judge scores; NaN = no turn
      (MAPO).
    turn_ids_NT: optional int [N, T]: turn index of each token, -1 for tokens
      outside any turn (MAPO token-level output).
    pairwise_NM: optional float [N, M]: outcome of completion i against the
      m-th other member of its group: 1 win, 0.5 tie, 0 loss, NaN no
      comparison (Pref-GRPO).
    extras: dict of further arrays used by transforms (reference rewards,
      confounders, difficulty scales, ...).
    reward_names: static tuple of K reward names.
  """
  rewards_NK: Array
  group_ids_N: Array
  valid_N: Array
  weights_K: Array
  lengths_N: Array | None = None
  task_ids_N: Array | None = None
  agent_ids_N: Array | None = None
  phase_mask_NZT: Array | None = None
  turn_scores_NU: Array | None = None
  turn_ids_NT: Array | None = None
  pairwise_NM: Array | None = None
  extras: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  reward_names: tuple[str, ...] = ()

  @classmethod
  def create(cls, rewards_NK: Any, group_ids_N: Any, *, valid_N: Any = None,
             weights_K: Any = None, reward_names: Sequence[str] | None = None,
             **optional: Any) -> "AdvantageInputs":
    """Builds inputs with defaults: all rows valid, unit weights, names r0..."""
    rewards_NK = jnp.asarray(rewards_NK)
    if not jnp.issubdtype(rewards_NK.dtype, jnp.floating):
      rewards_NK = rewards_NK.astype(jnp.float32)
    if rewards_NK.ndim != 2:
      raise ValueError(f"rewards_NK must be [N, K], got shape {rewards_NK.shape}.")
    n, k = rewards_NK.shape
    group_ids_N = jnp.asarray(group_ids_N, jnp.int32)
    valid_N = (jnp.ones((n,), bool) if valid_N is None
               else jnp.asarray(valid_N, bool))
    weights_K = (jnp.ones((k,), rewards_NK.dtype) if weights_K is None
                 else jnp.asarray(weights_K, rewards_NK.dtype))
    if reward_names is None:
      reward_names = tuple(f"r{i}" for i in range(k))
    reward_names = tuple(str(x) for x in reward_names)
    if len(reward_names) != k:
      raise ValueError(f"{len(reward_names)} reward names for {k} rewards.")
    if group_ids_N.shape != (n,) or valid_N.shape != (n,) or weights_K.shape != (k,):
      raise ValueError(
          f"Shape mismatch: rewards_NK {rewards_NK.shape}, group_ids_N "
          f"{group_ids_N.shape}, valid_N {valid_N.shape}, weights_K {weights_K.shape}.")
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = set(optional) - fields
    if unknown:
      raise TypeError(f"Unknown AdvantageInputs field(s) {sorted(unknown)}; valid: "
                      f"{sorted(fields)}.")
    optional = {key: (v if v is None or key == "extras" else jnp.asarray(v))
                for key, v in optional.items()}
    return cls(rewards_NK=rewards_NK, group_ids_N=group_ids_N, valid_N=valid_N,
               weights_K=weights_K, reward_names=reward_names, **optional)

  @property
  def num_rewards(self) -> int:
    return self.rewards_NK.shape[1]

  def reward_index(self, key: int | str) -> int:
    """Column index of a reward given by name or index."""
    if isinstance(key, (int, np.integer)):
      if not -self.num_rewards <= key < self.num_rewards:
        raise IndexError(f"Reward index {key} out of range for {self.num_rewards} rewards.")
      return int(key) % self.num_rewards
    if key not in self.reward_names:
      raise KeyError(f"Unknown reward {key!r}. Valid rewards: {', '.join(self.reward_names)}.")
    return self.reward_names.index(key)

  def replace(self, **changes: Any) -> "AdvantageInputs":
    return dataclasses.replace(self, **changes)

  def require(self, field: str, who: str) -> Array:
    """Returns an optional field or raises a clear error naming its user."""
    value = getattr(self, field)
    if value is None:
      where = WHERE.get(field, "rlx's RL loop does not fill it; pass it to compute_advantages")
      raise ValueError(f"{who} needs AdvantageInputs.{field}, which is None: {where}.")
    return value


jax.tree_util.register_dataclass(
    AdvantageInputs,
    data_fields=[f.name for f in dataclasses.fields(AdvantageInputs)
                 if f.name != "reward_names"],
    meta_fields=["reward_names"])


# Inputs the RL loop fills from data columns (config.advantage.columns).
COLUMN_FIELDS = ("task_ids_N", "agent_ids_N")
# Inputs the RL loop produces each round (config.advantage.inputs: producers
# in rlx/train/structured.py).
LOOP_FIELDS = ("agent_ids_N", "pairwise_NM", "phase_mask_NZT", "turn_scores_NU", "turn_ids_NT")
_PRODUCERS = {"agent_ids_N": "agent_parser", "pairwise_NM": "pairwise or judge",
              "phase_mask_NZT": "phase_split", "turn_scores_NU": "turn_scores",
              "turn_ids_NT": "turn_ids"}
# Where the RL loop gets each optional input: the config keys that provide it.
WHERE = {
    "task_ids_N": "set config.advantage.columns.task_ids_N to the data column that holds it",
    "agent_ids_N": ("set config.advantage.columns.agent_ids_N to the data column that holds "
                    "it, or config.advantage.inputs.agent_ids_N to a producer (agent_parser)"),
    **{f: f"set config.advantage.inputs.{f} to a producer ({_PRODUCERS[f]})"
       for f in LOOP_FIELDS if f != "agent_ids_N"},
    "lengths_N": "the RL loop fills it",
}


def column_inputs(columns: Mapping[str, Any], group_size: int
                  ) -> tuple[dict[str, Array], dict[str, Array]]:
  """Splits per-completion column arrays [N, ...] into AdvantageInputs fields
  (COLUMN_FIELDS as int32, LOOP_FIELDS as given) and transform extras. An extras key whose shape
  suffix starts with G (`reference_levels_GK`, `difficulty_scale_G`) is per
  prompt group: every `group_size`-th row (rows of a group are adjacent)."""
  fields, extras = {}, {}
  for key, value in columns.items():
    suffix = key.rsplit("_", 1)[-1]
    if key in COLUMN_FIELDS:
      fields[key] = jnp.asarray(value).astype(jnp.int32)
    elif key in LOOP_FIELDS:
      fields[key] = jnp.asarray(value)
    elif suffix.isupper() and suffix.startswith("G"):
      extras[key] = value[::group_size]
    else:
      extras[key] = value
  return fields, extras
