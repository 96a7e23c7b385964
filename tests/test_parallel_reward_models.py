"""Reward models follow config.mesh.reward_models on 8 simulated CPU devices."""
import os
import textwrap

from rlx import testing

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SCRIPT = textwrap.dedent("""
    import json, sys
    import numpy as np
    import jax
    from rlx.testing import make_tiny_checkpoint
    from rlx.parallel import models as aux, rules as rules_lib, mesh as mesh_lib
    from rlx.rewards.reward_models import RewardModel
    ck = make_tiny_checkpoint(sys.argv[1], "qwen2", seq_cls=True, num_labels=2, hidden_size=32,
                              intermediate_size=64, num_attention_heads=4, num_key_value_heads=2)
    prompts = ["hello there", "a b c d e f", "x"] * 3
    comps = ["yes", "no way", "maybe so, perhaps"] * 3
    aux.set_reward_model_mesh(None)
    ref = RewardModel.load(ck).score(prompts, comps, batch_size=4)
    policy = mesh_lib.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    rules = rules_lib.make_rules()
    out = {}
    for choice in ("policy", "last:4", "replicated"):
      m = aux.resolve_reward_model_mesh(choice, policy, rules)
      aux.set_reward_model_mesh(m, rules)
      rm = RewardModel.load(ck)
      got = rm.score(prompts, comps, batch_size=4)
      up = rm.params["layers"]["up"][...]
      mm = rm.cfg.mesh
      out[choice] = dict(diff=float(np.abs(got - ref).max()),
                         mesh=None if mm is None else dict(mm.mesh.shape),
                         batch_axes=None if mm is None else list(mm.batch),
                         devices=len(up.sharding.device_set),
                         shard=list(up.addressable_shards[0].data.shape), full=list(up.shape))
    try:
      aux.resolve_reward_model_mesh("last:9", policy, rules)
    except ValueError as e:
      out["error"] = str(e)
    print(json.dumps(out))
""")


def test_reward_model_shardings(tmp_path):
  out = testing.run_on_devices(["-c", SCRIPT, str(tmp_path / "rm")], devices=8)
  for choice in ("policy", "last:4", "replicated"):
    assert out[choice]["diff"] < 1e-5, out
  # The model's activations (and a splash kernel's shard_map) follow the reward-model mesh.
  assert out["policy"]["mesh"] == {"data": 2, "fsdp": 2, "tensor": 2}
  assert out["policy"]["batch_axes"] == ["data", "fsdp"]
  assert out["last:4"]["mesh"] == {"data": 1, "fsdp": 4, "tensor": 1}
  assert out["replicated"]["mesh"] is None
  assert out["policy"]["devices"] == 8 and out["policy"]["shard"] != out["policy"]["full"]
  assert out["last:4"]["devices"] == 4 and out["last:4"]["shard"] != out["last:4"]["full"]
  assert out["replicated"]["devices"] == 1 and out["replicated"]["shard"] == out["replicated"]["full"]
  assert "config.mesh.reward_models='last:9'" in out["error"]
