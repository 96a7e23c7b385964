"""Multi-host start-up and per-host data helpers.

Every host runs the same program (JAX multi-controller SPMD). Call
`maybe_initialize(cfg)` first thing, before anything touches a device; it calls
`jax.distributed.initialize` when the environment is multi-process:

  * explicit: `cfg.distributed.{coordinator_address, num_processes, process_id}`
    or the environment variables RLX_COORDINATOR ("host:port"),
    RLX_NUM_PROCESSES, RLX_PROCESS_ID (config wins over environment);
  * forced: RLX_DISTRIBUTED=1 (or `cfg.distributed.mode = 'on'`): JAX's own
    cluster auto-detection (TPU VM metadata, SLURM, Open MPI, GKE);
  * auto-detected: SLURM with more than one task (SLURM_JOB_ID and
    SLURM_NTASKS > 1), Open MPI with more than one rank, a Cloud TPU VM
    (Google PCI devices, or TPU_WORKER_HOSTNAMES / MEGASCALE_* variables).

RLX_DISTRIBUTED=0 (or `mode = 'off'`) disables it. Multi-process CPU runs use
gloo collectives (`jax_cpu_collectives_implementation`).
"""
from __future__ import annotations

import glob
import logging
import os
from typing import Any, Mapping

import jax
import numpy as np
from jax.sharding import NamedSharding

ENV_COORDINATOR = "RLX_COORDINATOR"
ENV_NUM_PROCESSES = "RLX_NUM_PROCESSES"
ENV_PROCESS_ID = "RLX_PROCESS_ID"
ENV_DISTRIBUTED = "RLX_DISTRIBUTED"
MODES = ("auto", "on", "off")

_TRUE = ("1", "true", "on", "yes")
_FALSE = ("0", "false", "off", "no")


def _cfg_get(cfg: Any, key: str, default: Any = None) -> Any:
  if cfg is None:
    return default
  dcfg = cfg.get("distributed", None) if hasattr(cfg, "get") else getattr(cfg, "distributed", None)
  if dcfg is None:
    return default
  value = dcfg.get(key, default) if hasattr(dcfg, "get") else getattr(dcfg, key, default)
  return default if value in (None, "", -1) else value


def _int(value: Any, name: str) -> int:
  try:
    return int(value)
  except (TypeError, ValueError):
    raise ValueError(f"{name} must be an integer, got {value!r}.") from None


def _google_pci_present() -> bool:
  """Cloud TPU VMs expose Google (vendor 0x1ae0) PCI accelerators."""
  for path in glob.glob("/sys/bus/pci/devices/*/vendor"):
    try:
      with open(path) as f:
        if f.read().strip() == "0x1ae0":
          return True
    except OSError:
      continue
  return False


def detect_cluster(env: Mapping[str, str] | None = None,
                   check_tpu_vm: bool = True) -> str | None:
  """Name of the multi-process environment JAX can auto-detect, or None."""
  env = os.environ if env is None else env
  if "SLURM_JOB_ID" in env and int(env.get("SLURM_NTASKS", env.get("SLURM_NPROCS", "1"))) > 1:
    return "slurm"
  if int(env.get("OMPI_COMM_WORLD_SIZE", "1")) > 1:
    return "ompi"
  hosts = env.get("TPU_WORKER_HOSTNAMES", "") or env.get("TPU_PROCESS_ADDRESSES", "")
  if len([h for h in hosts.split(",") if h]) > 1 or int(env.get("MEGASCALE_NUM_SLICES", "1")) > 1:
    return "tpu"
  if check_tpu_vm and _google_pci_present():
    return "tpu"
  return None


def init_args(cfg: Any = None, env: Mapping[str, str] | None = None,
              check_tpu_vm: bool = True) -> dict[str, Any] | None:
  """Keyword arguments `maybe_initialize` passes to `jax.distributed.initialize`.

  None means single-process (no initialization); {} means JAX auto-detection.
  Raises ValueError for an incomplete explicit setting.
  """
  env = os.environ if env is None else env
  mode = str(_cfg_get(cfg, "mode", "auto")).lower()
  if mode not in MODES:
    raise ValueError(f"distributed.mode {mode!r} is not one of {MODES}.")
  flag = env.get(ENV_DISTRIBUTED, "").strip().lower()
  if flag in _TRUE:
    mode = "on"
  elif flag in _FALSE:
    mode = "off"
  elif flag:
    raise ValueError(f"{ENV_DISTRIBUTED}={flag!r}: use 1 (on) or 0 (off).")
  if mode == "off":
    return None

  coordinator = _cfg_get(cfg, "coordinator_address") or env.get(ENV_COORDINATOR) or None
  num = _cfg_get(cfg, "num_processes")
  if num is None:
    num = env.get(ENV_NUM_PROCESSES) or None
  pid = _cfg_get(cfg, "process_id")
  if pid is None:
    pid = env.get(ENV_PROCESS_ID) or None
  if coordinator or num is not None or pid is not None:
    missing = [n for n, v in (("coordinator address (distributed.coordinator_address / "
                               f"{ENV_COORDINATOR})", coordinator),
                              (f"number of processes (distributed.num_processes / "
                               f"{ENV_NUM_PROCESSES})", num),
                              (f"process id (distributed.process_id / {ENV_PROCESS_ID})", pid))
               if v is None]
    if missing:
      raise ValueError("explicit multi-process set-up is incomplete; missing: "
                       + "; ".join(missing) + ".")
    num = _int(num, ENV_NUM_PROCESSES)
    pid = _int(pid, ENV_PROCESS_ID)
    if not 0 <= pid < num:
      raise ValueError(f"process id {pid} is outside [0, {num}).")
    if ":" not in str(coordinator):
      raise ValueError(f"coordinator address {coordinator!r} must be 'host:port'.")
    if num == 1 and mode != "on":
      return None
    args = dict(coordinator_address=str(coordinator), num_processes=num, process_id=pid)
  elif mode == "on" or detect_cluster(env, check_tpu_vm) is not None:
    args = {}
  else:
    return None
  timeout = _cfg_get(cfg, "timeout_s")
  if timeout is not None:
    args["initialization_timeout"] = _int(timeout, "distributed.timeout_s")
  return args


def maybe_initialize(cfg: Any = None, env: Mapping[str, str] | None = None) -> bool:
  """Initializes the JAX distributed system if the environment is multi-process.

  Call before any other JAX use. Returns True if this is (now) a multi-process
  run set up through `jax.distributed`, False for a single process.
  """
  if getattr(jax.distributed, "is_initialized", lambda: False)():
    return True
  args = init_args(cfg, env)
  if args is None:
    return False
  collectives = _cfg_get(cfg, "cpu_collectives", "gloo")
  if collectives and collectives != "none":
    # Multi-process CPU computations need a collectives backend; harmless on
    # TPU/GPU (it only configures the CPU client).
    try:
      jax.config.update("jax_cpu_collectives_implementation", collectives)
    except AttributeError:  # a jax without the option (gloo built in)
      logging.info("jax has no jax_cpu_collectives_implementation option; not set")
  logging.info("jax.distributed.initialize(%s)", args)
  jax.distributed.initialize(**args)
  logging.info("process %d of %d, %d local / %d global devices", jax.process_index(),
               jax.process_count(), jax.local_device_count(), jax.device_count())
  return True


def is_main_process() -> bool:
  """True on process 0 (the one that logs, writes metrics and HF exports)."""
  return jax.process_index() == 0


def process_index() -> int:
  return jax.process_index()


def process_count() -> int:
  return jax.process_count()


def process_batch_slice(global_batch: int, mesh: jax.sharding.Mesh,
                        rules: Any = None) -> slice:
  """Rows of a `global_batch`-row batch that this process's devices hold.

  With the batch split over the batch mesh axes (`rules.batch_sharding`),
  each process holds one contiguous block of rows; several processes hold the
  same block when the batch axes do not span all processes. The input
  pipeline reads these rows and `host_local_to_global` assembles the array.
  """
  from rlx.parallel import mesh as mesh_lib  # pylint: disable=g-import-not-at-top
  from rlx.parallel import rules as rules_lib  # pylint: disable=g-import-not-at-top
  sharding = rules_lib.batch_sharding(mesh, 1, rules)
  mesh_lib.check_batch_divisible(global_batch, mesh, rules_lib.batch_mesh_axes(mesh, rules))
  index_map = sharding.addressable_devices_indices_map((global_batch,))
  rows = sorted({idx[0].indices(global_batch)[:2] for idx in index_map.values()})
  start, stop = rows[0][0], rows[-1][1]
  if sum(b - a for a, b in rows) != stop - start:
    raise ValueError(
        f"this process's devices hold non-contiguous batch rows {rows}; order the "
        "mesh so that each process's devices are adjacent along the batch axes.")
  return slice(start, stop)


def host_local_to_global(local: Any, mesh: jax.sharding.Mesh, global_batch: int,
                         rules: Any = None) -> Any:
  """Global batch-sharded jax.Arrays from this process's rows (a pytree).

  Every leaf's dim 0 holds the rows `process_batch_slice(global_batch, mesh)`;
  the result has `global_batch` rows split over the batch axes.
  """
  from rlx.parallel import rules as rules_lib  # pylint: disable=g-import-not-at-top
  sl = process_batch_slice(global_batch, mesh, rules)

  def one(x):
    x = np.asarray(x)
    if x.shape[0] != sl.stop - sl.start:
      raise ValueError(f"local batch has {x.shape[0]} rows; this process holds rows "
                       f"[{sl.start}, {sl.stop}) of {global_batch}.")
    sharding: NamedSharding = rules_lib.batch_sharding(mesh, x.ndim, rules)
    return jax.make_array_from_process_local_data(
        sharding, x, (global_batch,) + x.shape[1:])

  return jax.tree.map(one, local)
