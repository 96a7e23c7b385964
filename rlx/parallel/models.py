"""Where auxiliary models (reward models) live: `config.mesh.reward_models`.

    "policy"      the policy's mesh and rules (params sharded like the policy's)
    "local"       the same rules on a mesh of this process's devices only
    "last:N"      a sub-mesh of this process's last N devices (fsdp over them)
    "replicated"  one device, no sharding (the previous behaviour)

Across processes, reward functions run per process on that process's rows, so
"policy" falls back to "local" there. The trainer calls `set_reward_model_mesh`
once; `RewardModel.load` then places params with `reward_model_shardings`.
"""
from __future__ import annotations

import threading
from typing import Any

import jax
from jax.sharding import Mesh

from rlx.parallel import mesh as mesh_lib
from rlx.parallel import rules as rules_lib

_LOCK = threading.Lock()
_STATE: dict[str, Any] = {"mesh": None, "rules": None}
CHOICES = ("policy", "local", "last:N", "replicated")


def resolve_reward_model_mesh(choice: str, policy_mesh: Mesh, rules: Any) -> Mesh | None:
  """The mesh for reward models, or None (one device)."""
  if choice == "replicated":
    return None
  local = jax.local_devices()
  if choice == "policy":
    if jax.process_count() == 1:
      return policy_mesh
    choice = "local"
  if choice == "local":
    axes = dict(policy_mesh.shape)
    size = 1
    for v in axes.values():
      size *= v
    if size != len(local):  # the policy's axes span processes: fsdp over local devices
      axes = {"data": 1, "fsdp": len(local), "tensor": 1}
    return mesh_lib.make_mesh(axes, devices=local)
  if choice.startswith("last:"):
    try:
      n = int(choice.split(":", 1)[1])
    except ValueError:
      n = -1
    if not 1 <= n <= len(local):
      raise ValueError(f"config.mesh.reward_models={choice!r}: N must be in 1..{len(local)} "
                       "(this process's devices).")
    return mesh_lib.make_mesh({"data": 1, "fsdp": n, "tensor": 1}, devices=local[-n:])
  raise ValueError(f"config.mesh.reward_models={choice!r}; valid: {', '.join(CHOICES)}.")


def set_reward_model_mesh(mesh: Mesh | None, rules: Any = None) -> None:
  with _LOCK:
    _STATE["mesh"], _STATE["rules"] = mesh, rules


def reward_model_mesh() -> tuple[Mesh | None, Any]:
  with _LOCK:
    return _STATE["mesh"], _STATE["rules"]


def place_reward_model(params: Any) -> Any:
  """Params on the reward-model mesh (sharded by the rules), else unchanged."""
  mesh, rules = reward_model_mesh()
  if mesh is None:
    return params
  return jax.device_put(params, rules_lib.param_shardings(params, mesh, rules))
