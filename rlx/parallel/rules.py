"""Logical axis names -> mesh axes -> shardings.

Parameters, activations, batches and KV caches name their dimensions with
logical axes ('embed', 'mlp', 'batch', ...). A list of rules maps each logical
name to mesh axes (None, one mesh axis, or a tuple of them). The same model
code then runs unsharded on 1 device or with FSDP + tensor parallelism on a
pod, changing only the mesh and the rules.

Rule semantics, for each dimension of an array in order:
  * the first rule naming the dimension's logical axis is used (rules from the
    config come before DEFAULT_RULES, so they override it);
  * mesh axes the mesh lacks, and mesh axes an earlier dimension of the same
    array already uses, are dropped;
  * if the dimension's size is given and not divisible, mesh axes are dropped
    (with a warning) until it is: that dimension is then replicated over them;
  * a logical axis no rule names is replicated.
"""
from __future__ import annotations

import warnings
from typing import Any, Callable, Iterable, Sequence

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from rlx.models import CACHE_AXES  # logical axes of a KV cache leaf
from rlx.models.sharding import dividing_axes
from rlx.parallel.mesh import check_batch_divisible

MeshAxes = str | tuple[str, ...] | None
Rules = Sequence[tuple[str, MeshAxes]]

DEFAULT_RULES: tuple[tuple[str, MeshAxes], ...] = (
    # Batch and activations.
    ("batch", ("data", "fsdp")),
    ("cache_seq", None),
    # Parameters: FSDP over the model width, tensor parallelism over the
    # vocabulary, MLP hidden units and attention heads.
    ("vocab", "tensor"),
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("head_dim", None),
    ("layers", None),
    ("labels", None),
)


def _norm_mesh_axes(m: Any) -> tuple[str, ...]:
  if m is None:
    return ()
  if isinstance(m, str):
    return (m,)
  return tuple(str(a) for a in m)


def make_rules(extra: Iterable[Sequence[Any]] | None = None,
               base: Rules = DEFAULT_RULES) -> tuple[tuple[str, MeshAxes], ...]:
  """`extra` rules (e.g. `cfg.mesh.rules`) followed by `base`; checks the form."""
  out = []
  for r in list(extra or ()) + list(base):
    if isinstance(r, str) or len(r) != 2 or not isinstance(r[0], str):
      raise ValueError(
          f"logical-axis rule {r!r} is not a pair (logical_name, mesh_axes) with "
          "mesh_axes None, a mesh axis name or a tuple of them.")
    m = r[1]
    if m is not None and not isinstance(m, str):
      m = tuple(m)
      if not all(isinstance(a, str) for a in m):
        raise ValueError(f"logical-axis rule {tuple(r)!r}: mesh axes must be names.")
    out.append((r[0], m))
  return tuple(out)


def rules_from_config(cfg: Any) -> tuple[tuple[str, MeshAxes], ...]:
  """`cfg.mesh.rules` (list of pairs, may be empty) before DEFAULT_RULES."""
  mcfg = cfg.mesh if hasattr(cfg, "mesh") else cfg
  extra = mcfg.get("rules", ()) if hasattr(mcfg, "get") else getattr(mcfg, "rules", ())
  return make_rules(extra or ())


def is_axes_leaf(x: Any) -> bool:
  """True for one array's logical axes: a PartitionSpec, a tuple of names/None, or None."""
  if x is None or isinstance(x, P):
    return True
  return isinstance(x, tuple) and all(e is None or isinstance(e, str) for e in x)


def logical_to_spec(axes: Sequence[str | None] | P | None, mesh: Any,
                    rules: Rules | None = None,
                    shape: Sequence[int] | None = None) -> P:
  """PartitionSpec for one array with logical `axes` (see module doc).

  Args:
    axes: one logical name (or None) per dimension; None means replicated.
    mesh: a Mesh or AbstractMesh (only `mesh.shape` is used).
    rules: pairs (logical_name, mesh_axes); default DEFAULT_RULES.
    shape: the array's shape, to drop mesh axes that do not divide a dim.
  """
  if axes is None:
    return P()
  rules = DEFAULT_RULES if rules is None else rules
  if shape is not None and len(shape) != len(axes):
    raise ValueError(f"logical axes {tuple(axes)} have {len(axes)} entries but the "
                     f"array has shape {tuple(shape)}.")
  sizes = dict(mesh.shape)
  used: set[str] = set()
  spec: list[MeshAxes] = []
  for i, name in enumerate(axes):
    if name is None:
      spec.append(None)
      continue
    if not isinstance(name, str):
      raise ValueError(f"logical axes {tuple(axes)}: entry {i} is {name!r}, not a name.")
    chosen: tuple[str, ...] = ()
    for lname, maxes in rules:
      if lname != name:
        continue
      cand = [a for a in _norm_mesh_axes(maxes) if a in sizes and a not in used]
      if shape is not None:
        kept = dividing_axes(cand, shape[i], sizes)
        dropped = [a for a in cand if a not in kept and sizes[a] > 1]
        if dropped:
          warnings.warn(
              f"logical axis {name!r} (dim {i} of shape {tuple(shape)}, size "
              f"{shape[i]}) is not divisible by mesh axes "
              f"{ {a: sizes[a] for a in dropped} }; replicating it over them.",
              stacklevel=3)
        cand = kept
      chosen = tuple(cand)
      break
    used.update(chosen)
    spec.append(None if not chosen else chosen[0] if len(chosen) == 1 else chosen)
  while spec and spec[-1] is None:
    spec.pop()
  return P(*spec)


def _shape_of(x: Any) -> tuple[int, ...] | None:
  return tuple(x.shape) if hasattr(x, "shape") else None


def logical_to_sharding(logical_axes: Any, mesh: jax.sharding.Mesh,
                        rules: Rules | None = None, shapes: Any = None) -> Any:
  """Pytree of NamedSharding for a pytree of logical axes.

  Args:
    logical_axes: pytree whose leaves are per-array logical axes (tuples of
      names/None or PartitionSpecs), e.g. `rlx.models.logical_axes(params)`.
    mesh: the device mesh.
    rules: logical-axis rules; default DEFAULT_RULES.
    shapes: optional pytree of arrays / ShapeDtypeStructs with one leaf per
      axes leaf (same order). When given, the result has the structure of
      `shapes` (so it can be used directly as jit in/out shardings) and mesh
      axes that do not divide a dimension are dropped with a warning.
  """
  axes_leaves, axes_def = jax.tree.flatten(logical_axes, is_leaf=is_axes_leaf)
  if shapes is None:
    return jax.tree.unflatten(
        axes_def, [NamedSharding(mesh, logical_to_spec(a, mesh, rules)) for a in axes_leaves])
  shape_leaves, shape_def = jax.tree.flatten(shapes)
  if len(shape_leaves) != len(axes_leaves):
    raise ValueError(
        f"logical axes have {len(axes_leaves)} leaves but the arrays have "
        f"{len(shape_leaves)}; they must describe the same pytree.")
  out = [NamedSharding(mesh, logical_to_spec(a, mesh, rules, _shape_of(s)))
         for a, s in zip(axes_leaves, shape_leaves)]
  return jax.tree.unflatten(shape_def, out)


def _model_logical_axes(params: Any) -> Any:
  from rlx import models  # pylint: disable=g-import-not-at-top
  return models.logical_axes(params)


def param_shardings(params: Any, mesh: jax.sharding.Mesh, rules: Rules | None = None,
                    logical_axes: Any = None) -> Any:
  """NamedShardings (structure of `params`) from the params' logical axes.

  `params` may be arrays or ShapeDtypeStructs; `logical_axes` defaults to
  `rlx.models.logical_axes(params)`.
  """
  if logical_axes is None:
    logical_axes = _model_logical_axes(params)
  return logical_to_sharding(logical_axes, mesh, rules, shapes=params)


def shard_params(params: Any, mesh: jax.sharding.Mesh, rules: Rules | None = None,
                 logical_axes: Any = None) -> Any:
  """Moves existing params to their shards (`jax.device_put`)."""
  return jax.device_put(params, param_shardings(params, mesh, rules, logical_axes))


def batch_spec(mesh: Any, ndim: int, rules: Rules | None = None) -> P:
  """PartitionSpec splitting dim 0 over the 'batch' mesh axes, others replicated."""
  return logical_to_spec(("batch",) + (None,) * (ndim - 1), mesh, rules)


def batch_sharding(mesh: jax.sharding.Mesh, ndim: int = 1,
                   rules: Rules | None = None) -> NamedSharding:
  """NamedSharding splitting dim 0 of an `ndim`-array over the batch axes."""
  return NamedSharding(mesh, batch_spec(mesh, ndim, rules))


def shard_batch(batch: Any, mesh: jax.sharding.Mesh, rules: Rules | None = None) -> Any:
  """device_put every array of a (single-process) batch pytree with batch_sharding.

  Scalars are replicated. For multi-process input use
  `rlx.parallel.distributed.host_local_to_global`.
  """
  def put(x):
    x = np.asarray(x) if not isinstance(x, jax.Array) else x
    if x.ndim == 0:
      return jax.device_put(x, NamedSharding(mesh, P()))
    check_batch_divisible(x.shape[0], mesh, batch_mesh_axes(mesh, rules))
    return jax.device_put(x, batch_sharding(mesh, x.ndim, rules))
  return jax.tree.map(put, batch)


def batch_mesh_axes(mesh: Any, rules: Rules | None = None) -> tuple[str, ...]:
  """Mesh axes the 'batch' rule splits a batch over (those the mesh has)."""
  spec = batch_spec(mesh, 1, rules)
  return _norm_mesh_axes(spec[0]) if len(spec) else ()


def cache_sharding(cache: Any, mesh: jax.sharding.Mesh, rules: Rules | None = None,
                   axes: Sequence[str | None] = CACHE_AXES) -> Any:
  """NamedShardings for a KV cache pytree (arrays or ShapeDtypeStructs).

  Leaves with `len(axes)` dims ([layers, batch, length, kv_heads, head_dim])
  get `axes`; others (e.g. scalar indices) are replicated. A number of KV
  heads not divisible by the tensor axis is replicated (with a warning).
  """
  def one(x):
    shape = tuple(x.shape)
    if len(shape) != len(axes):
      return NamedSharding(mesh, P())
    return NamedSharding(mesh, logical_to_spec(tuple(axes), mesh, rules, shape))
  return jax.tree.map(one, cache)


def _is_graphdef(x: Any) -> bool:
  try:
    from flax import nnx  # pylint: disable=g-import-not-at-top
  except ImportError:
    return False
  return isinstance(x, nnx.GraphDef)


def init_sharded(init_fn: Callable[..., Any], mesh: jax.sharding.Mesh,
                 rules: Rules | None = None,
                 logical_axes_fn: Callable[[Any], Any] | None = None) -> Callable[..., Any]:
  """Wraps `init_fn` so its params are created directly in their shards.

  `init_fn(*args)` returns params, or `(graphdef, params)` like
  `rlx.models.init_model`. The returned function traces `init_fn` once
  abstractly (`jax.eval_shape`), derives the params' shardings from
  `logical_axes_fn(abstract_params)` (default `rlx.models.logical_axes`) and
  runs `init_fn` under `jax.jit(..., out_shardings=...)`: each device only
  ever materializes its own shards. Returns what `init_fn` returns. Its
  `.compile(*args)` gives the compiled init (e.g. `.memory_analysis()`),
  compiled once per argument shapes.
  """
  axes_fn = logical_axes_fn or _model_logical_axes

  def prepare(args):
    box = {}

    def params_only(*a):
      out = init_fn(*a)
      if isinstance(out, tuple) and len(out) == 2 and _is_graphdef(out[0]):
        box["graphdef"] = out[0]
        return out[1]
      return out

    abstract = jax.eval_shape(params_only, *args)
    shardings = logical_to_sharding(axes_fn(abstract), mesh, rules, shapes=abstract)
    return jax.jit(params_only, out_shardings=shardings), box

  compiled_cache: dict[Any, Any] = {}

  def compiled_for(args):
    leaves, treedef = jax.tree.flatten(args)
    key = (treedef, tuple((getattr(x, "shape", None), str(getattr(x, "dtype", type(x))))
                          for x in leaves))
    if key not in compiled_cache:
      jitted, box = prepare(args)
      compiled_cache[key] = (jitted.lower(*args).compile(), box)
    return compiled_cache[key]

  def sharded(*args):
    compiled, box = compiled_for(args)
    params = compiled(*args)
    return (box["graphdef"], params) if "graphdef" in box else params

  sharded.compile = lambda *args: compiled_for(args)[0]
  return sharded


def place_tensor(array: np.ndarray, sharding: jax.sharding.Sharding,
                 dtype: Any = None) -> jax.Array:
  """A global jax.Array from a host array, copying to each device only its shard.

  For checkpoint loaders: `array` may be a numpy array or a lazy view (e.g. a
  memory-mapped safetensors tensor); only the slices this process's devices
  hold are read.
  """
  shape = tuple(array.shape)

  def cb(index):
    x = np.asarray(array[index])
    return x.astype(dtype) if dtype is not None else x

  return jax.make_array_from_callback(shape, sharding, cb)


def _key_str(k: Any) -> str:
  for attr in ("key", "name", "idx"):
    if hasattr(k, attr):
      return str(getattr(k, attr))
  return str(k)


def opt_state_shardings(opt_state: Any, params: Any, param_shardings_: Any,
                        mesh: jax.sharding.Mesh) -> Any:
  """Shardings for an optimizer state (arrays or ShapeDtypeStructs).

  A state leaf whose key path ends with a parameter's key path and has that
  parameter's shape (e.g. Adam's mu/nu) gets the parameter's sharding; other
  leaves (step counts, factored statistics) are replicated.
  """
  p_paths = jax.tree_util.tree_flatten_with_path(params)[0]
  s_leaves = jax.tree.leaves(param_shardings_)
  if len(p_paths) != len(s_leaves):
    raise ValueError(f"{len(p_paths)} params but {len(s_leaves)} param shardings.")
  by_path = {tuple(_key_str(k) for k in path): (tuple(x.shape), s)
             for (path, x), s in zip(p_paths, s_leaves)}
  replicated = NamedSharding(mesh, P())

  def one(path, x):
    keys = tuple(_key_str(k) for k in path)
    for i in range(len(keys)):
      hit = by_path.get(keys[i:])
      if hit is not None and hit[0] == tuple(x.shape):
        return hit[1]
    return replicated

  return jax.tree_util.tree_map_with_path(one, opt_state)


def init_opt_state_sharded(optimizer: Any, params: Any, mesh: jax.sharding.Mesh,
                           param_shardings_: Any = None) -> Any:
  """`optimizer.init(params)` under jit with each state leaf sharded like its param.

  `param_shardings_` defaults to the params' own `.sharding`s.
  """
  if param_shardings_ is None:
    param_shardings_ = jax.tree.map(lambda x: x.sharding, params)
  shapes = jax.eval_shape(optimizer.init, params)
  shardings = opt_state_shardings(shapes, params, param_shardings_, mesh)
  return jax.jit(optimizer.init, out_shardings=shardings)(params)


def bytes_per_device(tree: Any) -> dict[Any, int]:
  """Bytes of `tree`'s arrays held on each addressable device (from addressable_shards)."""
  out: dict[Any, int] = {}
  for x in jax.tree.leaves(tree):
    for shard in x.addressable_shards:
      out[shard.device] = out.get(shard.device, 0) + shard.data.nbytes
  return out


def spec_summary(shardings: Any) -> dict[str, str]:
  """Key path -> PartitionSpec string, for logging how params are laid out."""
  flat = jax.tree_util.tree_flatten_with_path(shardings)[0]
  return {"/".join(_key_str(k) for k in path if _key_str(k) != "value"): str(s.spec)
          for path, s in flat}


def model_mesh(mesh: jax.sharding.Mesh | None, rules: Rules | None = None) -> Any:
  """A model's `ModelConfig.mesh` (`rlx.models.ModelMesh`): `mesh` and the mesh axes the
  rules give its activations' batch and (query / KV) heads dims; None without a mesh or
  on one device (the model then traces with no activation constraints)."""
  from rlx.models.sharding import ModelMesh
  if mesh is None or mesh.size == 1:
    return None
  rules = make_rules() if rules is None else rules

  def axes(logical):  # of a [batch, logical] activation (the batch's axes come first)
    sp = logical_to_spec(("batch", logical), mesh, rules)
    m = sp[1] if len(sp) > 1 else None
    return () if m is None else (m,) if isinstance(m, str) else tuple(m)
  return ModelMesh(mesh, batch_mesh_axes(mesh, rules), axes("heads"), axes("kv_heads"))
