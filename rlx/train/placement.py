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
from jax.sharding import NamedSharding, PartitionSpec as P

from rlx import parallel
from rlx.models.sharding import ModelMesh


class Placement:

  def __init__(self, cfg, devices: Any = None):
    """Mesh from `cfg.mesh` over `devices` (default: all devices of all processes).

    Raises ValueError naming `config.mesh.axes` / `config.mesh.dcn_axes` when
    the mesh does not fit the devices.
    """
    try:
      self.mesh = parallel.mesh_from_config(cfg, devices)
    except ValueError as e:
      n = len(devices) if devices is not None else jax.device_count()
      msg = str(e)
      msg = (f"config.{msg}" if msg.startswith("mesh.") else f"config.mesh: {msg}").rstrip(".")
      raise ValueError(f"{msg}; this run has {n} devices in {jax.process_count()} "
                       "process(es).") from None
    self.rules = parallel.rules_from_config(cfg)
    self.multi = jax.process_count() > 1

    def take(tree, idx):
      return jax.tree.map(lambda x: jax.lax.with_sharding_constraint(
          x[idx], parallel.batch_sharding(self.mesh, x.ndim, self.rules)), tree)

    self._take = jax.jit(take)

  def check_batch(self, rows: int, what: str) -> None:
    try:
      parallel.check_batch_divisible(rows, self.mesh, parallel.batch_mesh_axes(self.mesh, self.rules))
    except ValueError as e:
      raise ValueError(f"{what}: {e}") from None

  def model_mesh(self) -> ModelMesh | None:
    """The decoder's `ModelConfig.mesh` on this mesh (`rlx.parallel.model_mesh`); None on
    one device."""
    return parallel.model_mesh(self.mesh, self.rules)

  def local_rows(self, global_rows: int) -> slice:
    """This process's rows of a `global_rows`-row batch."""
    if not self.multi:
      return slice(0, global_rows)
    return parallel.process_batch_slice(global_rows, self.mesh, self.rules)

  def param_shardings(self, params: Any, logical_axes: Any = None) -> Any:
    """logical_axes: default the params' own (`rlx.models.logical_axes`)."""
    return parallel.param_shardings(params, self.mesh, self.rules, logical_axes)

  def put_params(self, params: Any, shardings: Any = None) -> Any:
    return jax.device_put(params, shardings or self.param_shardings(params))

  def replicated(self, x: Any) -> Any:
    """`x` (the same value on every process) replicated on every mesh device."""
    return jax.device_put(x, NamedSharding(self.mesh, P()))

  def init_opt_state(self, tx, params: Any, shardings: Any) -> Any:
    return parallel.init_opt_state_sharded(tx, params, self.mesh, shardings)

  def to_global(self, local: Any, global_rows: int) -> Any:
    """Batch-sharded global arrays from this process's rows (dim 0)."""
    if not self.multi:
      return parallel.shard_batch(jax.tree.map(np.asarray, local), self.mesh, self.rules)
    return parallel.host_local_to_global(local, self.mesh, global_rows, self.rules)

  def take_rows(self, tree: Any, idx: np.ndarray) -> Any:
    """Rows `idx` (host ints, the same on every process) of global batch arrays,
    split over the batch axes like the batch (a minibatch)."""
    return self._take(tree, np.asarray(idx, np.int32))

  def to_local(self, tree: Any) -> Any:
    """NumPy copies of this process's rows of global batch arrays."""
    if not self.multi:
      return jax.tree.map(np.asarray, tree)
    def one(x):
      full = np.asarray(multihost_utils.process_allgather(x, tiled=True))
      return full[self.local_rows(full.shape[0])]
    return jax.tree.map(one, tree)

  def _process_blocks(self) -> tuple[int, dict[int, tuple[int, int]]]:
    """(S, {process: [a, b)}): the batch shards S and each process's block of them."""
    shards = parallel.num_batch_shards(self.mesh, parallel.batch_mesh_axes(self.mesh, self.rules))
    index = parallel.batch_sharding(self.mesh, 1, self.rules).devices_indices_map((shards,))
    blocks: dict[int, tuple[int, int]] = {}
    for device, idx in index.items():
      a, b, _ = idx[0].indices(shards)
      lo, hi = blocks.get(device.process_index, (a, b))
      blocks[device.process_index] = (min(lo, a), max(hi, b))
    return shards, blocks

  def gather(self, local: np.ndarray) -> np.ndarray:
    """The global batch from every process's local rows `local` (dim 0), in row order.

    Rows held by several processes (batch axes that do not span all
    processes) appear once. A collective in multi-process runs.
    """
    local = np.asarray(local)
    if not self.multi:
      return local
    stacked = np.asarray(multihost_utils.process_allgather(local))  # [processes, rows, ...]
    shards, blocks = self._process_blocks()
    per_shard = local.shape[0] // (blocks[jax.process_index()][1] - blocks[jax.process_index()][0])
    out = np.empty((shards * per_shard,) + local.shape[1:], local.dtype)
    for proc, (a, b) in blocks.items():
      out[a * per_shard:b * per_shard] = stacked[proc]
    return out

  def fetch(self, tree: Any) -> Any:
    """Whole (unsharded) NumPy copies of global arrays on every process.

    A collective in multi-process runs: every process must call it.
    """
    if not self.multi:
      return jax.device_get(tree)
    return jax.tree.map(lambda x: np.asarray(multihost_utils.process_allgather(x, tiled=True)),
                        tree)

  def sum_over_processes(self, local: np.ndarray) -> np.ndarray:
    """Sum of per-process totals `local` (e.g. counts over this process's rows),
    counting processes that hold the same rows once. A collective."""
    local = np.asarray(local)
    if not self.multi:
      return local
    stacked = np.asarray(multihost_utils.process_allgather(local))
    first: dict[tuple[int, int], int] = {}
    for proc, block in sorted(self._process_blocks()[1].items()):
      first.setdefault(block, proc)
    return stacked[sorted(first.values())].sum(0)
