"""Device meshes from the config.

`mesh.axes` names the mesh axes and their sizes, e.g.
`{'data': -1, 'fsdp': 2, 'tensor': 1}`; one size may be -1 for "all remaining
devices". Axes are ordered data, fsdp, sequence, expert, tensor, then any other
axes in the order given (a ConfigDict sorts its keys, so the order is fixed
here rather than taken from the config); the innermost (last) axis gets the
fastest links.

For multi-slice TPU (or multi-host GPU over a slower network), `mesh.dcn_axes`
gives how many slices (granules) each axis spans, e.g. `{'data': 2}`. Then
`mesh.axes` describes one slice and each mesh axis has size
`axes[name] * dcn_axes[name]`.
"""
from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import jax
import numpy as np
from jax.experimental import mesh_utils
from jax.sharding import AxisType, Mesh

AxisSizes = Mapping[str, int] | Sequence[tuple[str, int]]

CANONICAL_ORDER = ("data", "fsdp", "sequence", "expert", "tensor")
DEFAULT_AXES = (("data", -1), ("fsdp", 1), ("tensor", 1))
# Mesh axes across which a batch's leading dimension is split.
BATCH_AXES = ("data", "fsdp")


def _ordered(axes: AxisSizes | None) -> list[tuple[str, int]]:
  """(name, size) pairs in mesh order; dict-likes use CANONICAL_ORDER."""
  if axes is None:
    return list(DEFAULT_AXES)
  if hasattr(axes, "items"):
    items = [(str(k), v) for k, v in axes.items()]
    known = [kv for name in CANONICAL_ORDER for kv in items if kv[0] == name]
    rest = [kv for kv in items if kv[0] not in CANONICAL_ORDER]
    items = known + rest
  else:
    items = [(str(k), v) for k, v in axes]
  names = [k for k, _ in items]
  if len(set(names)) != len(names):
    raise ValueError(f"mesh axes {names} repeat a name.")
  for name, size in items:
    if not isinstance(size, (int, np.integer)) or (size < 1 and size != -1):
      raise ValueError(
          f"mesh axis {name!r} has size {size!r}; sizes are positive ints or -1 "
          "(all remaining devices).")
  return [(k, int(v)) for k, v in items]


def _fmt(items: Sequence[tuple[str, int]]) -> str:
  return "{" + ", ".join(f"{k!r}: {v}" for k, v in items) + "}"


def resolve_axes(axes: AxisSizes | None, num_devices: int,
                 what: str = "mesh.axes", unit: str = "devices") -> dict[str, int]:
  """Fills in the -1 axis so that the sizes multiply to `num_devices`.

  Raises ValueError naming the axes, their sizes and the device count when
  they do not fit.
  """
  items = _ordered(axes)
  free = [k for k, v in items if v == -1]
  if len(free) > 1:
    raise ValueError(f"{what} {_fmt(items)}: at most one axis may be -1, got {free}.")
  fixed = math.prod(v for _, v in items if v != -1)
  if free:
    if num_devices % fixed:
      raise ValueError(
          f"{what} {_fmt(items)} does not fit {num_devices} {unit}: the fixed "
          f"axes multiply to {fixed}, which does not divide {num_devices}, so "
          f"axis {free[0]!r} (-1) has no integer size.")
    items = [(k, num_devices // fixed if v == -1 else v) for k, v in items]
  elif fixed != num_devices:
    raise ValueError(
        f"{what} {_fmt(items)} multiply to {fixed} but there are {num_devices} "
        f"{unit}; make them multiply to that count or set one axis to -1.")
  return dict(items)


def _device_grid(shape: Sequence[int], devices: Sequence[Any]) -> np.ndarray:
  try:
    return mesh_utils.create_device_mesh(shape, devices)
  except (NotImplementedError, ValueError, AssertionError):
    # Some TPU topologies need a physical axis split over two mesh axes.
    return mesh_utils.create_device_mesh(shape, devices, allow_split_physical_axes=True)


def make_mesh(axes: AxisSizes | None = None,
              dcn_axes: Mapping[str, int] | None = None,
              devices: Sequence[Any] | None = None) -> Mesh:
  """A `Mesh` over `devices` (default: all devices of all processes).

  Args:
    axes: axis name -> size (one may be -1). With `dcn_axes`, sizes per slice.
    dcn_axes: axis name -> number of slices (granules) the axis spans. Slices
      are TPU slices (`device.slice_index`), else processes. Empty or all
      ones: a single slice (no hybrid mesh).
    devices: devices to use; default `jax.devices()`.
  """
  devices = list(jax.devices() if devices is None else devices)
  n = len(devices)
  if not dcn_axes or all(v == 1 for v in dict(dcn_axes).values()):
    sizes = resolve_axes(axes, n)
    grid = _device_grid(tuple(sizes.values()), devices)
    return Mesh(grid, tuple(sizes), axis_types=(AxisType.Auto,) * len(sizes))

  items = _ordered(axes)
  names = [k for k, _ in items]
  unknown = [k for k in dcn_axes if k not in names]
  if unknown:
    raise ValueError(f"mesh.dcn_axes names {unknown}, which are not mesh axes {names}.")
  # TPU slices are granules; elsewhere (GPU, CPU) each process is one.
  process_is_granule = (devices[0].platform != "tpu"
                        or getattr(devices[0], "slice_index", None) is None)
  granules = len({d.process_index if process_is_granule else d.slice_index
                  for d in devices})
  kind = "processes" if process_is_granule else "TPU slices"
  dcn_sizes = resolve_axes([(k, dcn_axes.get(k, 1)) for k in names], granules,
                           "mesh.dcn_axes", kind)
  ici_sizes = resolve_axes(items, n // granules, "mesh.axes (per slice)")
  grid = mesh_utils.create_hybrid_device_mesh(
      tuple(ici_sizes.values()), tuple(dcn_sizes[k] for k in names), devices,
      process_is_granule=process_is_granule, allow_split_physical_axes=True)
  return Mesh(grid, tuple(names), axis_types=(AxisType.Auto,) * len(names))


def mesh_from_config(cfg: Any, devices: Sequence[Any] | None = None) -> Mesh:
  """`make_mesh` from `cfg.mesh.axes` and (optional) `cfg.mesh.dcn_axes`."""
  mcfg = _get(cfg, "mesh", cfg)
  dcn = _get(mcfg, "dcn_axes", None)
  return make_mesh(_get(mcfg, "axes", None), dict(dcn) if dcn else None, devices)


def _get(obj: Any, key: str, default: Any) -> Any:
  """obj[key] for dicts and ConfigDicts, `default` when absent."""
  try:
    return obj[key]
  except (KeyError, TypeError, AttributeError):
    return getattr(obj, key, default)


def batch_axes(mesh: Any, axes: Sequence[str] = BATCH_AXES) -> tuple[str, ...]:
  """The mesh axes among `axes` that the mesh has (batch dimension split)."""
  return tuple(a for a in axes if a in mesh.shape)


def num_batch_shards(mesh: Any, axes: Sequence[str] = BATCH_AXES) -> int:
  return math.prod(mesh.shape[a] for a in batch_axes(mesh, axes))


def check_batch_divisible(batch: int, mesh: Any, axes: Sequence[str] = BATCH_AXES,
                          what: str = "batch") -> None:
  """Raises ValueError if `batch` rows cannot be split evenly across `axes`."""
  used = batch_axes(mesh, axes)
  shards = math.prod(mesh.shape[a] for a in used)
  if batch % shards:
    sizes = ", ".join(f"{a}={mesh.shape[a]}" for a in used)
    lo, hi = (batch // shards) * shards, (batch // shards + 1) * shards
    choices = f"{hi}" if lo == 0 else f"{lo} or {hi}"
    raise ValueError(
        f"{what} size {batch} does not divide across the data axes ({sizes}: "
        f"{shards} shards); use a multiple of {shards}, e.g. {choices}.")
