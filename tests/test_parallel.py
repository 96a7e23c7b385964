"""Tests of rlx.parallel: meshes, logical-axis rules, sharded init/forward, start-up args.

Checks that need 8 devices run in one subprocess (this file run as a script
with XLA_FLAGS=--xla_force_host_platform_device_count=8) that prints a JSON
dict of measurements; the parent test asserts on them.
"""
from __future__ import annotations

import json
import warnings

import ml_collections as mlc
import numpy as np
import pytest
from jax.sharding import AbstractMesh, PartitionSpec as P

from rlx import parallel
from rlx import testing
from rlx.parallel import distributed

MESH222 = AbstractMesh((2, 2, 2), ("data", "fsdp", "tensor"))

# Tiny model of the 8-device check: every dim divides fsdp <= 4 and tensor <= 2.
V, E, M, L, H, K, D = 64, 32, 64, 2, 4, 2, 8


# ----------------------------------------------------------------- mesh shapes
def test_resolve_axes_fills_minus_one_in_canonical_order():
  assert parallel.resolve_axes({"tensor": 2, "data": -1, "fsdp": 2}, 16) == {
      "data": 4, "fsdp": 2, "tensor": 2}
  assert list(parallel.resolve_axes({"tensor": 2, "data": -1, "fsdp": 2}, 16)) == [
      "data", "fsdp", "tensor"]
  # A list of pairs keeps its own order; extra axes go after the canonical ones.
  assert list(parallel.resolve_axes([("tensor", 2), ("data", -1)], 8)) == ["tensor", "data"]
  assert list(parallel.resolve_axes({"stage": 2, "data": -1}, 8)) == ["data", "stage"]
  assert parallel.resolve_axes(None, 8) == {"data": 8, "fsdp": 1, "tensor": 1}


def test_mesh_that_does_not_fit_names_axes_sizes_and_device_count():
  with pytest.raises(ValueError) as e:
    parallel.resolve_axes({"data": 3, "fsdp": 2}, 8)
  msg = str(e.value)
  assert "'data': 3" in msg and "'fsdp': 2" in msg and "6" in msg and "8 devices" in msg
  with pytest.raises(ValueError) as e:
    parallel.resolve_axes({"data": -1, "tensor": 3}, 8)
  assert "'tensor': 3" in str(e.value) and "8 devices" in str(e.value)
  with pytest.raises(ValueError, match="at most one axis may be -1"):
    parallel.resolve_axes({"data": -1, "fsdp": -1}, 8)
  with pytest.raises(ValueError, match="'fsdp' has size 0"):
    parallel.resolve_axes({"data": -1, "fsdp": 0}, 8)
  # On the real (1-device) machine.
  with pytest.raises(ValueError, match="multiply to 2 but there are 1 devices"):
    parallel.make_mesh({"data": 1, "fsdp": 2, "tensor": 1})


def test_dcn_axes_errors_on_one_process():
  with pytest.raises(ValueError, match=r"mesh.dcn_axes \{'data': 2, 'fsdp': 1, 'tensor': 1\} "
                     r"multiply to 2 but there are 1 processes"):
    parallel.make_mesh({"data": -1, "fsdp": 1, "tensor": 1}, dcn_axes={"data": 2})
  with pytest.raises(ValueError, match=r"names \['pipeline'\], which are not mesh axes"):
    parallel.make_mesh({"data": -1}, dcn_axes={"pipeline": 2})
  mesh = parallel.make_mesh({"data": -1, "fsdp": 1}, dcn_axes={"data": 1})
  assert dict(mesh.shape) == {"data": 1, "fsdp": 1}


def test_mesh_from_config_single_device():
  cfg = mlc.ConfigDict()
  cfg.mesh = mlc.ConfigDict()
  cfg.mesh.axes = mlc.ConfigDict({"data": -1, "fsdp": 1, "tensor": 1})
  mesh = parallel.mesh_from_config(cfg)
  assert dict(mesh.shape) == {"data": 1, "fsdp": 1, "tensor": 1}
  cfg.mesh.dcn_axes = mlc.ConfigDict({"data": 1, "fsdp": 1, "tensor": 1})  # one slice
  assert dict(parallel.mesh_from_config(cfg).shape) == {"data": 1, "fsdp": 1, "tensor": 1}


def test_check_batch_divisible():
  parallel.check_batch_divisible(8, MESH222)
  parallel.check_batch_divisible(4, MESH222)
  with pytest.raises(ValueError) as e:
    parallel.check_batch_divisible(6, MESH222)
  msg = str(e.value)
  assert "6" in msg and "data=2" in msg and "fsdp=2" in msg and "4 shards" in msg
  assert "4 or 8" in msg
  with pytest.raises(ValueError, match="use a multiple of 4, e.g. 4"):
    parallel.check_batch_divisible(3, MESH222)
  assert parallel.num_batch_shards(AbstractMesh((4, 2), ("data", "tensor"))) == 4


# ----------------------------------------------------------------------- rules
def test_default_rules_fsdp_and_tensor():
  spec = parallel.logical_to_spec
  assert spec(("vocab", "embed"), MESH222) == P("tensor", "fsdp")
  assert spec(("layers", "embed", "heads", "head_dim"), MESH222) == P(None, "fsdp", "tensor")
  assert spec(("layers", "mlp", "embed"), MESH222) == P(None, "tensor", "fsdp")
  assert spec(("embed",), MESH222) == P("fsdp")
  assert spec(("batch", "length"), MESH222) == P(("data", "fsdp"))
  assert spec(None, MESH222) == P()
  # A mesh axis is used once per array: 'embed' after 'batch' loses fsdp.
  assert spec(("batch", "length", "embed"), MESH222) == P(("data", "fsdp"))
  # Axes the mesh lacks are dropped; unknown logical names are replicated.
  assert spec(("vocab", "embed"), AbstractMesh((8,), ("data",))) == P()
  assert spec(("batch", "whatever"), AbstractMesh((8,), ("data",))) == P("data")


def test_rules_override_and_config():
  rules = parallel.make_rules([("mlp", ("fsdp", "tensor")), ("embed", None)])
  assert parallel.logical_to_spec(("embed", "mlp"), MESH222, rules) == P(None, ("fsdp", "tensor"))
  cfg = mlc.ConfigDict()
  cfg.mesh = mlc.ConfigDict()
  cfg.mesh.rules = (("heads", None),)
  rules = parallel.rules_from_config(cfg)
  assert rules[0] == ("heads", None) and rules[1:] == parallel.DEFAULT_RULES
  assert parallel.logical_to_spec(("embed", "heads"), MESH222, rules) == P("fsdp")
  with pytest.raises(ValueError, match="is not a pair"):
    parallel.make_rules([("mlp",)])
  with pytest.raises(ValueError, match="mesh axes must be names"):
    parallel.make_rules([("mlp", (1, 2))])


def test_indivisible_dim_is_replicated_with_warning():
  with pytest.warns(UserWarning, match=r"'kv_heads' .* size 1\) is not divisible by mesh axes"):
    s = parallel.logical_to_spec(("layers", "embed", "kv_heads", "head_dim"), MESH222,
                                 shape=(2, 32, 1, 8))
  assert s == P(None, "fsdp")
  # Batch of 2 over data=2, fsdp=2: keeps 'data', drops 'fsdp'.
  mesh = AbstractMesh((2, 2), ("data", "fsdp"))
  with pytest.warns(UserWarning, match="fsdp"):
    assert parallel.logical_to_spec(("batch",), mesh, shape=(2,)) == P("data")
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    assert parallel.logical_to_spec(("vocab", "embed"), MESH222, shape=(64, 32)) == P(
        "tensor", "fsdp")
  with pytest.raises(ValueError, match="have 2 entries but the array has shape"):
    parallel.logical_to_spec(("vocab", "embed"), MESH222, shape=(64,))


def test_logical_to_sharding_tree_structure_and_opt_state_matching():
  import jax  # pylint: disable=g-import-not-at-top
  import optax  # pylint: disable=g-import-not-at-top
  mesh = parallel.make_mesh({"data": 1, "fsdp": 1, "tensor": 1})
  params = {"w": jax.ShapeDtypeStruct((4, 6), np.float32), "b": jax.ShapeDtypeStruct((6,), np.float32)}
  axes = {"w": P("embed", "mlp"), "b": ("mlp",)}
  sh = parallel.logical_to_sharding(axes, mesh, shapes=params)
  assert set(sh) == {"w", "b"} and sh["w"].spec == P("fsdp", "tensor") and sh["b"].spec == P("tensor")
  with pytest.raises(ValueError, match="same pytree"):
    parallel.logical_to_sharding({"w": ("embed", "mlp")}, mesh, shapes=params)
  opt = optax.adamw(1e-3)
  state = jax.eval_shape(opt.init, params)
  osh = parallel.opt_state_shardings(state, params, sh, mesh)
  assert osh[0].mu["w"].spec == P("fsdp", "tensor") and osh[0].nu["b"].spec == P("tensor")
  assert osh[0].count.spec == P()


# ------------------------------------------------------------ distributed args
def test_init_args_from_env_and_config():
  env = {"RLX_COORDINATOR": "10.0.0.1:1234", "RLX_NUM_PROCESSES": "4", "RLX_PROCESS_ID": "2"}
  assert distributed.init_args(env=env, check_tpu_vm=False) == dict(
      coordinator_address="10.0.0.1:1234", num_processes=4, process_id=2)
  cfg = mlc.ConfigDict({"distributed": {"coordinator_address": "h:9", "num_processes": 2,
                                        "process_id": 0, "mode": "auto", "timeout_s": 60}})
  assert distributed.init_args(cfg, env=env, check_tpu_vm=False) == dict(
      coordinator_address="h:9", num_processes=2, process_id=0, initialization_timeout=60)
  # Unset config values ('' / -1) fall back to the environment.
  unset = mlc.ConfigDict({"distributed": {"mode": "auto", "coordinator_address": "",
                                          "num_processes": -1, "process_id": -1,
                                          "cpu_collectives": "gloo", "timeout_s": -1}})
  assert distributed.init_args(unset, env={}, check_tpu_vm=False) is None
  assert distributed.init_args(unset, env=env, check_tpu_vm=False)["process_id"] == 2
  # Single process: nothing to do; RLX_DISTRIBUTED forces / disables.
  assert distributed.init_args(env={}, check_tpu_vm=False) is None
  assert distributed.init_args(env={"RLX_NUM_PROCESSES": "1", "RLX_PROCESS_ID": "0",
                                    "RLX_COORDINATOR": "h:1"}, check_tpu_vm=False) is None
  assert distributed.init_args(env={"RLX_DISTRIBUTED": "1"}, check_tpu_vm=False) == {}
  assert distributed.init_args(env=dict(env, RLX_DISTRIBUTED="0"), check_tpu_vm=False) is None
  # Auto-detected clusters hand over to JAX's detection.
  slurm = {"SLURM_JOB_ID": "7", "SLURM_NTASKS": "2"}
  assert distributed.init_args(env=slurm, check_tpu_vm=False) == {}
  assert distributed.detect_cluster(slurm, check_tpu_vm=False) == "slurm"
  assert distributed.detect_cluster({"SLURM_JOB_ID": "7", "SLURM_NTASKS": "1"},
                                    check_tpu_vm=False) is None
  assert distributed.detect_cluster({"TPU_WORKER_HOSTNAMES": "a,b"}, check_tpu_vm=False) == "tpu"
  assert distributed.detect_cluster({"MEGASCALE_NUM_SLICES": "2"}, check_tpu_vm=False) == "tpu"
  assert distributed.detect_cluster({"OMPI_COMM_WORLD_SIZE": "8"}, check_tpu_vm=False) == "ompi"


def test_init_args_errors():
  with pytest.raises(ValueError, match=r"missing: .*process id .*RLX_PROCESS_ID"):
    distributed.init_args(env={"RLX_COORDINATOR": "h:1", "RLX_NUM_PROCESSES": "2"},
                          check_tpu_vm=False)
  with pytest.raises(ValueError, match=r"process id 2 is outside \[0, 2\)"):
    distributed.init_args(env={"RLX_COORDINATOR": "h:1", "RLX_NUM_PROCESSES": "2",
                               "RLX_PROCESS_ID": "2"}, check_tpu_vm=False)
  with pytest.raises(ValueError, match="must be 'host:port'"):
    distributed.init_args(env={"RLX_COORDINATOR": "h", "RLX_NUM_PROCESSES": "2",
                               "RLX_PROCESS_ID": "0"}, check_tpu_vm=False)
  with pytest.raises(ValueError, match="RLX_DISTRIBUTED='maybe'"):
    distributed.init_args(env={"RLX_DISTRIBUTED": "maybe"}, check_tpu_vm=False)
  with pytest.raises(ValueError, match="distributed.mode 'sometimes'"):
    distributed.init_args(mlc.ConfigDict({"distributed": {"mode": "sometimes"}}), env={},
                          check_tpu_vm=False)


def test_maybe_initialize_single_process_is_noop():
  assert distributed.maybe_initialize(env={"RLX_DISTRIBUTED": "0"}) is False
  assert distributed.is_main_process() and distributed.process_count() == 1


# ------------------------------------------------------------- 8-device checks
def _expected_param_bytes_per_device(fsdp: int, tensor: int) -> int:
  """Bytes of the tiny model's float32 params on one device (hand-derived layout)."""
  ft = fsdp * tensor
  h_t = tensor if H % tensor == 0 else 1  # indivisible head counts are replicated
  kv_t = tensor if K % tensor == 0 else 1
  n = (V * E / ft  # embed (vocab, embed)
       + E / fsdp  # final_norm
       + 2 * L * E / fsdp  # attn_norm, mlp_norm
       + 2 * L * E * H * D / (fsdp * h_t)  # q, o
       + 2 * L * E * K * D / (fsdp * kv_t)  # k, v
       + 3 * L * E * M / ft  # gate, up, down
       + E * V / ft)  # lm_head
  return int(4 * n)


def _spec(s) -> list:
  """PartitionSpec -> JSON list (its str differs between jax versions)."""
  return [list(e) if isinstance(e, tuple) else e for e in s]


def _child() -> dict:
  """Runs on 8 simulated CPU devices; returns measurements."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import optax  # pylint: disable=g-import-not-at-top
  from jax.sharding import NamedSharding  # pylint: disable=g-import-not-at-top
  from rlx import models  # pylint: disable=g-import-not-at-top

  out: dict = {"device_count": jax.device_count()}
  cfg = models.ModelConfig(vocab_size=V, hidden_size=E, intermediate_size=M, num_layers=L,
                           num_heads=H, num_kv_heads=K, head_dim=D)
  key = jax.random.key(0)

  # Mesh errors and -1 on the real 8 devices.
  try:
    parallel.make_mesh({"data": 3, "fsdp": 2})
  except ValueError as e:
    out["mesh_error"] = str(e)
  out["mesh_rest"] = dict(parallel.make_mesh({"data": -1, "tensor": 2}).shape)

  mesh = parallel.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
  init = parallel.init_sharded(lambda k: models.init_model(cfg, k), mesh)
  graphdef, params = init(key)
  params1 = jax.jit(lambda k: models.init_model(cfg, k)[1], device=jax.devices()[0])(key)
  out["init_max_diff"] = max(float(np.max(np.abs(np.asarray(a) - np.asarray(b))))
                             for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(params1)))
  out["specs"] = {k: _spec(x.sharding.spec) for k, x in zip(
      parallel.spec_summary(jax.tree.map(lambda x: x.sharding, params)), jax.tree.leaves(params))}
  out["shard_shapes"] = {k: list(x.addressable_shards[0].data.shape) for k, x in zip(
      out["specs"], jax.tree.leaves(params))}
  mem = init.compile(key).memory_analysis()
  out["init_output_bytes"] = int(mem.output_size_in_bytes)
  out["init_temp_bytes"] = int(mem.temp_size_in_bytes)
  out["full_param_bytes"] = int(sum(x.nbytes for x in jax.tree.leaves(params1)))
  out["num_params_arrays"] = len(jax.tree.leaves(params1))

  # Forward parity: sharded (2x2x2) vs one device.
  B, T = 4, 8
  tokens = jax.random.randint(jax.random.key(1), (B, T), 0, V)
  mask = jnp.ones((B, T), bool).at[0, :3].set(False)
  pos = models.positions_from_mask(mask)
  fwd = jax.jit(lambda p, t, q, m: models.forward(graphdef, p, t, q, m)[0])
  dev0 = jax.devices()[0]
  ref = fwd(jax.device_put(params1, dev0), *jax.device_put((tokens, pos, mask), dev0))
  batch = parallel.shard_batch({"t": tokens, "p": pos, "m": mask}, mesh)
  out["batch_spec"] = _spec(batch["t"].sharding.spec)
  logits = fwd(params, batch["t"], batch["p"], batch["m"])
  logits, ref = np.asarray(logits), np.asarray(ref)
  out["logits_max_diff"] = float(np.max(np.abs(logits - ref)))
  out["logits_scale"] = float(np.max(np.abs(ref)))

  # Bytes per device for several (fsdp, tensor) layouts (shard_params on host params).
  out["bytes"] = {}
  host_params = jax.tree.map(np.asarray, params1)  # host -> shards: no resharding compiles
  for fsdp, tensor in ((1, 1), (2, 1), (2, 2), (4, 2), (1, 8)):
    m = parallel.make_mesh({"data": -1, "fsdp": fsdp, "tensor": tensor})
    with warnings.catch_warnings(record=True) as w:
      warnings.simplefilter("always")
      p = parallel.shard_params(host_params, m)
    per_dev = parallel.bytes_per_device(p)
    out["bytes"][f"{fsdp}x{tensor}"] = {"min": min(per_dev.values()), "max": max(per_dev.values()),
                                        "n": len(per_dev), "warnings": len(w)}

  # Optimizer state sharded like its params.
  opt = optax.adamw(1e-3)
  opt_state = parallel.init_opt_state_sharded(opt, params, mesh)
  out["opt_mu_matches"] = all(a.sharding == b.sharding for a, b in zip(
      jax.tree.leaves(opt_state[0].mu), jax.tree.leaves(params)))
  out["opt_nu_matches"] = all(a.sharding == b.sharding for a, b in zip(
      jax.tree.leaves(opt_state[0].nu), jax.tree.leaves(params)))
  out["opt_count_spec"] = _spec(opt_state[0].count.sharding.spec)
  out["opt_bytes_max"] = max(parallel.bytes_per_device(opt_state).values())

  # place_tensor: host array straight into its shards.
  host = np.arange(V * E, dtype=np.float32).reshape(V, E)
  calls = []

  class Lazy:  # records which slices were read, like a memory-mapped tensor
    shape, dtype = host.shape, host.dtype

    def __getitem__(self, idx):
      calls.append(idx)
      return host[idx]

  sh = NamedSharding(mesh, parallel.logical_to_spec(("vocab", "embed"), mesh))
  arr = parallel.place_tensor(Lazy(), sh, dtype=np.float32)
  out["place_equal"] = bool(np.array_equal(np.asarray(arr), host))
  out["place_shard_shape"] = list(arr.addressable_shards[0].data.shape)
  out["place_max_read_rows"] = max(len(range(*i[0].indices(V))) for i in calls)

  # KV cache shardings.
  cache = jax.eval_shape(lambda: models.init_cache(cfg, 4, 16))
  out["cache_spec"] = _spec(parallel.cache_sharding(cache, mesh)["k"].spec)

  # Batch that does not divide over data x fsdp = 4.
  try:
    parallel.shard_batch({"t": np.zeros((6, 3))}, mesh)
  except ValueError as e:
    out["batch_error"] = str(e)
  return out


@pytest.fixture(scope="module")
def eight_device_results():
  return testing.run_on_devices([__file__], devices=8)


def test_8dev_mesh_errors(eight_device_results):
  r = eight_device_results
  assert r["device_count"] == 8
  assert "'data': 3" in r["mesh_error"] and "8 devices" in r["mesh_error"]
  assert r["mesh_rest"] == {"data": 4, "tensor": 2}
  assert "6" in r["batch_error"] and "4 shards" in r["batch_error"]


def test_8dev_init_sharded_creates_params_in_shards(eight_device_results):
  r = eight_device_results
  assert r["init_max_diff"] < 1e-6  # same values as the unsharded init
  assert r["specs"]["embed"] == ["tensor", "fsdp"]
  assert r["specs"]["layers/q"] == [None, "fsdp", "tensor"]
  assert r["specs"]["layers/k"] == [None, "fsdp", "tensor"]
  assert r["specs"]["layers/down"] == [None, "tensor", "fsdp"]
  assert r["specs"]["lm_head"] == ["fsdp", "tensor"]
  assert r["specs"]["final_norm"] == ["fsdp"]
  assert r["shard_shapes"]["embed"] == [V // 2, E // 2]
  assert r["shard_shapes"]["layers/q"] == [L, E // 2, H // 2, D]
  per_dev = _expected_param_bytes_per_device(2, 2)
  # The compiled init writes only this device's shards (plus, on XLA CPU, an
  # 8-byte pointer per output buffer), and never needs the full parameters as
  # scratch.
  assert per_dev <= r["init_output_bytes"] <= per_dev + 8 * r["num_params_arrays"]
  assert r["full_param_bytes"] > 3 * per_dev
  assert r["init_temp_bytes"] + r["init_output_bytes"] < r["full_param_bytes"]


def test_8dev_forward_matches_single_device(eight_device_results):
  r = eight_device_results
  assert r["batch_spec"] == [["data", "fsdp"]]
  assert r["logits_scale"] > 1e-2
  assert r["logits_max_diff"] < 1e-5


def test_8dev_param_bytes_per_device(eight_device_results):
  b = eight_device_results["bytes"]
  full = _expected_param_bytes_per_device(1, 1)
  assert full == eight_device_results["full_param_bytes"]
  for key, (fsdp, tensor) in {"1x1": (1, 1), "2x1": (2, 1), "2x2": (2, 2), "4x2": (4, 2),
                              "1x8": (1, 8)}.items():
    assert b[key]["n"] == 8
    assert b[key]["min"] == b[key]["max"] == _expected_param_bytes_per_device(fsdp, tensor), key
  assert b["1x1"]["max"] > b["2x1"]["max"] > b["2x2"]["max"] > b["4x2"]["max"]
  # tensor=8 does not divide 4 heads / 2 kv heads: those dims are replicated, with warnings.
  assert b["1x8"]["warnings"] > 0 and b["2x2"]["warnings"] == 0


def test_8dev_opt_state_and_place_tensor_and_cache(eight_device_results):
  r = eight_device_results
  assert r["opt_mu_matches"] and r["opt_nu_matches"]
  assert r["opt_count_spec"] == []
  # mu + nu + the replicated int32 step count.
  assert r["opt_bytes_max"] == 2 * _expected_param_bytes_per_device(2, 2) + 4
  assert r["place_equal"] and r["place_shard_shape"] == [V // 2, E // 2]
  assert r["place_max_read_rows"] == V // 2  # never read the whole tensor at once
  assert r["cache_spec"] == [None, ["data", "fsdp"], None, "tensor"]


if __name__ == "__main__":
  print(json.dumps(_child()))
