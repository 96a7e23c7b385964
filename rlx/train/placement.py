"""Where the trainer's arrays live: the mesh, parameter and batch shardings.

One code path for 1 CPU, 8 simulated devices, a GPU host or a multi-host pod:
every jitted function sees global arrays; each process feeds and reads back
only its own rows of the batch (`to_global` / `to_local`).
"""
from __future__ import annotations

from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils

from rlx import parallel


class Placement:

  def __init__(self, cfg):
    self.mesh = parallel.mesh_from_config(cfg)
    self.rules = parallel.rules_from_config(cfg)
    self.multi = jax.process_count() > 1

  def check_batch(self, rows: int, what: str) -> None:
    try:
      parallel.check_batch_divisible(rows, self.mesh, parallel.batch_mesh_axes(self.mesh, self.rules))
    except ValueError as e:
      raise ValueError(f"{what}: {e}") from None

  def local_rows(self, global_rows: int) -> slice:
    """This process's rows of a `global_rows`-row batch."""
    if not self.multi:
      return slice(0, global_rows)
    return parallel.process_batch_slice(global_rows, self.mesh, self.rules)

  def param_shardings(self, params: Any) -> Any:
    return parallel.param_shardings(params, self.mesh, self.rules)

  def put_params(self, params: Any, shardings: Any = None) -> Any:
    return jax.device_put(params, shardings or self.param_shardings(params))

  def init_opt_state(self, tx, params: Any, shardings: Any) -> Any:
    return parallel.init_opt_state_sharded(tx, params, self.mesh, shardings)

  def to_global(self, local: Any, global_rows: int) -> Any:
    """Batch-sharded global arrays from this process's rows (dim 0)."""
    if not self.multi:
      return parallel.shard_batch(jax.tree.map(np.asarray, local), self.mesh, self.rules)
    return parallel.host_local_to_global(local, self.mesh, global_rows, self.rules)

  def to_local(self, tree: Any) -> Any:
    """NumPy copies of this process's rows of global batch arrays."""
    if not self.multi:
      return jax.tree.map(np.asarray, tree)
    def one(x):
      full = np.asarray(multihost_utils.process_allgather(x, tiled=True))
      return full[self.local_rows(full.shape[0])]
    return jax.tree.map(one, tree)

  def gather(self, local: np.ndarray) -> np.ndarray:
    """All processes' local rows, concatenated in process order (for metrics)."""
    if not self.multi:
      return np.asarray(local)
    return np.asarray(multihost_utils.process_allgather(np.asarray(local), tiled=True))
