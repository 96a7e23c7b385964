"""Two CPU processes on localhost form one JAX system through rlx.parallel.

Each child runs this file as a script with 2 simulated devices, starts up with
`maybe_initialize` from RLX_* environment variables (gloo CPU collectives), and
computes on a mesh of the 4 devices of both processes; it prints a JSON line
the parent checks against numpy.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np

GLOBAL_BATCH, WIDTH, OUT = 8, 6, 4


def _global_data() -> tuple[np.ndarray, np.ndarray]:
  x = np.arange(GLOBAL_BATCH * WIDTH, dtype=np.float32).reshape(GLOBAL_BATCH, WIDTH) / 10
  w = np.linspace(-1, 1, WIDTH * OUT, dtype=np.float32).reshape(WIDTH, OUT)
  return x, w


def _child() -> dict:
  from rlx import parallel  # pylint: disable=g-import-not-at-top
  started = parallel.maybe_initialize()  # before anything touches a device
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  from jax.sharding import NamedSharding, PartitionSpec as P  # pylint: disable=g-import-not-at-top

  out = {"started": started, "process_index": jax.process_index(),
         "process_count": jax.process_count(), "devices": jax.device_count(),
         "local_devices": jax.local_device_count(), "main": parallel.is_main_process(),
         "collectives": jax.config.jax_cpu_collectives_implementation}
  x, w = _global_data()

  # 1) Data parallel over both processes: each host feeds only its rows.
  mesh = parallel.make_mesh({"data": -1})
  rows = parallel.process_batch_slice(GLOBAL_BATCH, mesh)
  out["rows"] = [rows.start, rows.stop]
  xg = parallel.host_local_to_global({"x": x[rows]}, mesh, GLOBAL_BATCH)["x"]
  out["x_shape"] = list(xg.shape)
  out["sum"] = float(jax.jit(jnp.sum)(xg))

  # 2) FSDP x data on a hybrid mesh: processes are the DCN granules.
  hmesh = parallel.make_mesh({"data": 1, "fsdp": 2}, dcn_axes={"data": 2})
  out["hybrid_shape"] = dict(hmesh.shape)
  out["hybrid_processes"] = [[d.process_index for d in row] for row in hmesh.devices]
  w_sh = NamedSharding(hmesh, parallel.logical_to_spec(("embed", "mlp"), hmesh))
  wg = parallel.place_tensor(w, w_sh)
  rows_h = parallel.process_batch_slice(GLOBAL_BATCH, hmesh)
  xh = parallel.host_local_to_global(x[rows_h], hmesh, GLOBAL_BATCH)
  y = jax.jit(lambda a, b: a @ b, out_shardings=NamedSharding(hmesh, P()))(xh, wg)
  out["matmul"] = np.asarray(multihost_utils.process_allgather(y, tiled=True)).tolist()
  out["w_local_shard_rows"] = sorted({s.index[0].indices(WIDTH)[:2] for s in wg.addressable_shards})
  jax.distributed.shutdown()
  return out


def test_two_processes_one_mesh():
  import portpicker  # pylint: disable=g-import-not-at-top
  port = portpicker.pick_unused_port()
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  procs = []
  for pid in range(2):
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2",
               JAX_PLATFORMS="cpu", RLX_COORDINATOR=f"127.0.0.1:{port}",
               RLX_NUM_PROCESSES="2", RLX_PROCESS_ID=str(pid))
    env.pop("RLX_DISTRIBUTED", None)
    procs.append(subprocess.Popen([sys.executable, os.path.abspath(__file__)], env=env, cwd=root,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
  results = []
  for p in procs:
    try:
      stdout, stderr = p.communicate(timeout=180)
    except subprocess.TimeoutExpired:
      for q in procs:
        q.kill()
      raise
    assert p.returncode == 0, stderr[-4000:]
    results.append(json.loads(stdout.strip().splitlines()[-1]))

  x, w = _global_data()
  for pid, r in enumerate(results):
    assert r["started"] and r["process_index"] == pid and r["process_count"] == 2
    assert r["devices"] == 4 and r["local_devices"] == 2 and r["main"] == (pid == 0)
    assert r["collectives"] == "gloo"
    assert r["rows"] == [4 * pid, 4 * pid + 4]
    assert r["x_shape"] == [GLOBAL_BATCH, WIDTH]
    np.testing.assert_allclose(r["sum"], x.sum(), rtol=1e-6)
    assert r["hybrid_shape"] == {"data": 2, "fsdp": 2}
    # Each mesh row (one 'data' index) is one process.
    assert r["hybrid_processes"] == [[0, 0], [1, 1]]
    np.testing.assert_allclose(np.array(r["matmul"]), x @ w, rtol=1e-5, atol=1e-5)
    # w's 'embed' rows are split over fsdp inside each process: this process
    # holds both halves on its two devices, each device one half.
    assert r["w_local_shard_rows"] == [[0, 3], [3, 6]]


if __name__ == "__main__":
  print(json.dumps(_child()))
