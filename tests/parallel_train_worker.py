"""Subprocess side of tests/test_parallel_train.py (run as a script), and the
config file its trainer runs use (`get_config`).

    python tests/parallel_train_worker.py pieces OUT.json DATA.jsonl WORKDIR
        8 simulated devices: one RL step (sampler + loss/gradients + two
        updates) with params and batch sharded on a 2x2x2 (data, fsdp, tensor)
        mesh vs a 1-device mesh -> OUT.json; then `train_rl` for 2 steps on
        the 2x2x2 mesh in WORKDIR.
    python tests/parallel_train_worker.py placement OUT.json
        Placement's conversions in a multi-process run -> OUT.json.<process>.
    python tests/parallel_train_worker.py cli PROBE -- [rlx.main flags]
        `python -m rlx.main ...`; each process writes PROBE.<process_index>:
        the mesh and the shard shapes of the state and batch of its first
        update.

XLA_FLAGS (device count), JAX_PLATFORMS and the RLX_* multi-process variables
come from the parent's environment.
"""
from __future__ import annotations

import dataclasses
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)
TINY_RL = os.path.join(ROOT, "tests", "configs", "tiny_rl.py")


def get_config(arg=None):
  """tests/configs/tiny_rl.py with 4 prompts a step, 4 updates a step (2 epochs
  x 2 minibatches), Adam eps 1e-4 and rewards that do not depend on a
  completion's position in the batch (tiny_rl's `test/flaky` does, so it would
  change with the number of processes)."""
  from rlx.rewards.registry import REWARD_FNS  # pylint: disable=g-import-not-at-top
  from rlx.train.config import load_config  # pylint: disable=g-import-not-at-top

  @REWARD_FNS.register("test/flaky_text", overwrite=True)
  def flaky_text(prompts, completions, **cols):
    del prompts, cols
    if any(len(c) % 3 == 0 for c in completions):
      raise RuntimeError("flaky reward")  # the scorer retries one by one
    return [float(len(c) % 5) / 4 for c in completions]

  cfg = load_config(TINY_RL, arg)
  cfg.rewards = {"correct": {"fn": "arith/correct", "weight": 1.0},
                 "length": {"fn": "arith/length", "weight": 0.5},
                 "flaky": {"fn": "test/flaky_text", "weight": 0.5}}
  cfg.train.batch_prompts = 4
  cfg.train.minibatches = 2  # 2 epochs x 2 minibatches: old log-probs, row gathers
  cfg.train.epochs = 2
  cfg.train.keep_checkpoints = 4
  # Adam's first updates are ~lr * g / (|g| + eps): with eps = 1e-8, gradient
  # entries at rounding-noise level (group-centred advantages cancel in
  # sum(adv * grad logp)) get +-lr steps whose sign depends on the summation
  # order, and runs on different meshes drift apart by ~1e-3 within a step.
  cfg.optim.eps = 1e-4
  return cfg


def _max_abs(a, b) -> float:
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  diffs = [float(np.max(np.abs(np.asarray(x, np.float64) - np.asarray(y, np.float64))))
           if np.size(x) else 0.0 for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b))]
  return max(diffs) if diffs else 0.0


def _shard_shapes(tree) -> dict[str, list]:
  """Key path -> [global shape, shard shape on this process's first device]."""
  import jax  # pylint: disable=g-import-not-at-top
  out = {}
  for path, x in jax.tree_util.tree_flatten_with_path(tree)[0]:
    name = "/".join(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k))))
                    for k in path)
    shard = x.addressable_shards[0]
    out[name] = [list(x.shape), list(shard.data.shape),
                 len({s.device for s in x.addressable_shards})]
  return out


def pieces(out_path: str, data_path: str) -> None:
  """Sharded (2x2x2) vs 1-device: sampled tokens, loss, grads, updated params."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from rlx.data import tokenize_prompts  # pylint: disable=g-import-not-at-top
  from rlx.train import common, steps  # pylint: disable=g-import-not-at-top
  from rlx.train.optim import make_optimizer  # pylint: disable=g-import-not-at-top
  from rlx.train.placement import Placement  # pylint: disable=g-import-not-at-top
  from rlx.train import rl, rl_setup  # pylint: disable=g-import-not-at-top

  cfg = get_config(f"data={data_path}")
  workdir = os.path.dirname(out_path)
  policy = common.load_policy(cfg, workdir)
  tok, graphdef = policy.tokenizer, policy.graphdef
  init_params = jax.device_get(policy.params)  # host copy (device buffers get donated)
  rows = common.load_rows(cfg, "train", cfg.data.num_train)[:cfg.train.batch_prompts]
  B, G = cfg.train.batch_prompts, cfg.sampling.group_size
  N, P = B * G, cfg.data.max_prompt_len
  ptok, pmask = tokenize_prompts(tok, [r["prompt"] for r in rows], P)
  settings = rl_setup._settings(cfg, eval_mode=False, tokenizer=tok)
  tx = make_optimizer(cfg.optim, 10)
  loss_fn = steps.make_loss_fn(graphdef, cfg.loss.terms,
                               temperature=cfg.sampling.temperature, chunk=0, detached_old=True,
                               max_len=cfg.sampling.max_new_tokens, num_groups=B)
  loss_grad = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))
  key = jax.random.PRNGKey(7)
  rng = np.random.default_rng(0)
  adv = rng.standard_normal(N).astype(np.float32)
  ref_shift = (0.05 * rng.standard_normal((N, cfg.sampling.max_new_tokens))).astype(np.float32)

  results = {}
  for name, axes, devices in (("one", {"data": 1, "fsdp": 1, "tensor": 1}, jax.devices()[:1]),
                              ("mesh", {"data": 2, "fsdp": 2, "tensor": 2}, None)):
    cfg.mesh.axes = axes
    place = Placement(cfg, devices=devices)
    p_sh = place.param_shardings(policy.params)
    params = place.put_params(init_params, p_sh)
    state = steps.TrainState(step=place.replicated(np.zeros((), np.int32)), params=params,
                             opt_state=place.init_opt_state(tx, params, p_sh),
                             skipped=place.replicated(np.zeros((), np.int32)))
    # As in train_rl: the state keeps its layout, so the step compiles once.
    update_fn = steps.make_update_fn(
        graphdef, tx, cfg.loss.terms, temperature=cfg.sampling.temperature,
        chunk=0, detached_old=True, max_len=cfg.sampling.max_new_tokens, num_groups=B,
        state_shardings=jax.tree.map(lambda x: x.sharding, state))
    ro = rl_setup.sample_jit(graphdef, params, *place.to_global((ptok, pmask), B), key, settings)
    ro_np = place.to_local(ro)
    if name == "mesh":  # settings.tail_rows on the mesh (rows gathered across data shards)
      stops = dataclasses.replace(settings, stop_token_ids=tuple(range(3, len(tok), 4)))
      tails = [place.to_local(rl_setup.sample_jit(
          graphdef, params, *place.to_global((ptok, pmask), B), key,
          dataclasses.replace(stops, tail_rows=t))) for t in (0, 2)]
      tail_lengths = np.sort(tails[0].completion_lengths)
    local = {k: getattr(ro_np, k) for k in ("prompt_tokens", "prompt_mask", "completion_tokens",
                                            "completion_mask", "sample_logprobs",
                                            "completion_lengths")}
    local.update(adv=adv, ref=local["sample_logprobs"] + ref_shift)
    g = place.to_global(local, N)
    cmask = g["completion_mask"]
    batch = dict(tokens=jnp.concatenate([g["prompt_tokens"], g["completion_tokens"]], 1),
                 attn_mask=jnp.concatenate([g["prompt_mask"], cmask], 1),
                 loss_mask=cmask.astype(jnp.float32), adv=g["adv"],
                 old_logp=jnp.zeros(cmask.shape, jnp.float32), sample_logp=g["sample_logprobs"],
                 ref_logp=g["ref"], correct=g["completion_lengths"] > 6,
                 group=jnp.repeat(jnp.arange(B, dtype=jnp.int32), G),
                 lengths=g["completion_lengths"])
    (loss, _), grads = loss_grad(state.params, batch)
    new_state, metrics = update_fn(state, batch)
    new_state, metrics2 = update_fn(new_state, batch)  # a second update: Adam moments used
    results[name] = dict(
        tokens=np.asarray(ro_np.completion_tokens), lengths=np.asarray(ro_np.completion_lengths),
        sample_logp=np.asarray(ro_np.sample_logprobs), loss=np.asarray(loss),
        grads=jax.device_get(grads), params=jax.device_get(new_state.params),
        metrics=jax.device_get(metrics), metrics2=jax.device_get(metrics2),
        shards=_shard_shapes(new_state.params),
        grad_shards=_shard_shapes(grads),
        mesh=dict(place.mesh.shape))
  one, mesh = results["one"], results["mesh"]
  out = {
      "tail_engaged": bool(tail_lengths[-3] < tail_lengths[-1] < cfg.sampling.max_new_tokens),
      "tail_tokens_equal": bool((tails[0].completion_tokens == tails[1].completion_tokens).all()),
      "tail_logp_diff": _max_abs(tails[0].sample_logprobs, tails[1].sample_logprobs),
      "mesh": mesh["mesh"], "one_mesh": one["mesh"],
      "tokens_equal": bool((one["tokens"] == mesh["tokens"]).all()),
      "lengths": one["lengths"].tolist(),
      "sample_logp_diff": _max_abs(one["sample_logp"], mesh["sample_logp"]),
      "loss": float(one["loss"]), "loss_diff": _max_abs(one["loss"], mesh["loss"]),
      "grad_diff": _max_abs(one["grads"], mesh["grads"]),
      "grad_max": _max_abs(one["grads"], jax.tree.map(np.zeros_like, one["grads"])),
      "param_diff": _max_abs(one["params"], mesh["params"]),
      "param_change": _max_abs(one["params"], init_params),
      "metrics_diff": _max_abs(one["metrics"], mesh["metrics"]),
      "metrics2_diff": _max_abs(one["metrics2"], mesh["metrics2"]),
      "grad_norm": float(one["metrics"]["grad_norm"]),
      "shards": mesh["shards"], "grad_shards": mesh["grad_shards"],
  }
  with open(out_path, "w") as f:
    json.dump(out, f)


def placement(out_path: str) -> None:
  """Placement's host <-> global conversions in a multi-process run, on a mesh
  whose batch axes span the processes and on one where every process holds
  every row (tensor parallelism across processes)."""
  from rlx import parallel  # pylint: disable=g-import-not-at-top
  parallel.maybe_initialize()
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import ml_collections as mlc  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from rlx.train.placement import Placement  # pylint: disable=g-import-not-at-top

  rows = 8
  x = np.arange(rows * 3, dtype=np.float32).reshape(rows, 3)
  w = np.arange(4 * 8, dtype=np.float32).reshape(4, 8)
  out = {"process": jax.process_index()}
  for name, axes in (("split", {"data": 2, "fsdp": 1, "tensor": 2}),
                     ("replicated_rows", {"data": 1, "fsdp": 1, "tensor": 4})):
    cfg = mlc.ConfigDict({"mesh": {"axes": axes, "rules": ()}})
    place = Placement(cfg)
    mine = place.local_rows(rows)
    g = place.to_global({"x": x[mine]}, rows)["x"]
    doubled = jax.jit(lambda a: 2 * a)(g)
    w_g = place.put_params({"w": w}, {"w": jax.sharding.NamedSharding(
        place.mesh, jax.sharding.PartitionSpec(None, "tensor"))})["w"]
    out[name] = {
        "rows": [mine.start, mine.stop],
        "sum": float(jax.jit(jnp.sum)(g)),
        "to_local": place.to_local(doubled).tolist(),
        "gather": place.gather(x[mine][:, 0]).tolist(),
        "count": float(place.sum_over_processes(np.float32(mine.stop - mine.start))),
        "fetch": place.fetch(w_g).tolist(),
        "w_shard_cols": w_g.addressable_shards[0].data.shape[1],
        "replicated": place.replicated(np.int32(5)).sharding.is_fully_replicated,
    }
  with open(f"{out_path}.{jax.process_index()}", "w") as f:
    json.dump(out, f)
  jax.distributed.shutdown()


def install_probe(probe_path: str) -> None:
  """Wraps steps.make_update_fn: the first update of each process writes the
  mesh and the shard shapes of the state and batch it gets to PROBE.<process>."""
  from rlx.train import steps  # pylint: disable=g-import-not-at-top
  make = steps.make_update_fn

  def probed_make(*args, **kwargs):
    fn = make(*args, **kwargs)

    def probed(state, batch, *frozen, **kw):  # frozen: the LoRA base
      import jax  # pylint: disable=g-import-not-at-top
      path = f"{probe_path}.{jax.process_index()}"
      if not os.path.exists(path):
        mesh = next(iter(jax.tree.leaves(state.params))).sharding.mesh
        info = {"params": _shard_shapes(state.params),
                "opt_state": _shard_shapes(state.opt_state),
                "batch_tokens": _shard_shapes({"t": batch["tokens"]})["t"],
                "mesh": dict(mesh.shape), "process_count": jax.process_count(),
                "local_devices": jax.local_device_count()}
        if frozen:
          info["frozen"] = _shard_shapes(frozen[0]["params"])
        new_state, metrics = fn(state, batch, *frozen, **kw)
        info["new_params"] = _shard_shapes(new_state.params)
        with open(path, "w") as f:
          json.dump(info, f)
        return new_state, metrics
      return fn(state, batch, *frozen, **kw)

    return probed

  steps.make_update_fn = probed_make


def cli(probe_path: str, argv: list[str]) -> None:
  """`python -m rlx.main ARGV` with the probe installed."""
  from absl import app  # pylint: disable=g-import-not-at-top
  from rlx import main as rlx_main  # pylint: disable=g-import-not-at-top
  install_probe(probe_path)
  app.run(rlx_main.main, argv=["rlx.main"] + argv)


def train_2x2x2(data_path: str, workdir: str) -> None:
  """`train_rl` for 2 steps on the 2x2x2 mesh, with the probe (after `pieces`,
  in the same process: the sampler's compilation is reused)."""
  from rlx.train.rl import train_rl  # pylint: disable=g-import-not-at-top
  install_probe(workdir + ".probe")
  cfg = get_config(f"data={data_path},steps=2")
  cfg.mesh.axes = {"data": 2, "fsdp": 2, "tensor": 2}
  train_rl(cfg, workdir)


if __name__ == "__main__":
  if sys.argv[1] == "pieces":
    pieces(sys.argv[2], sys.argv[3])
    train_2x2x2(sys.argv[3], sys.argv[4])
  elif sys.argv[1] == "placement":
    placement(sys.argv[2])
  elif sys.argv[1] == "cli":
    assert sys.argv[3] == "--"
    cli(sys.argv[2], sys.argv[4:])
  else:
    raise SystemExit(f"unknown mode {sys.argv[1]!r}; valid: pieces, placement, cli")
