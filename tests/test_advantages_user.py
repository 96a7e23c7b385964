"""A user registers an estimator in their own module and selects it by name
inside a jitted training step."""
import importlib.util
import pathlib

import jax
import jax.numpy as jnp
import numpy as np

from rlx.advantages import ESTIMATORS, AdvantageInputs, compute_advantages, estimator_options


def _load_user_module():
  path = pathlib.Path(__file__).with_name("user_estimator_example.py")
  assert len(path.read_text().splitlines()) < 30
  spec = importlib.util.spec_from_file_location("user_estimator_example", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_user_estimator_in_jitted_step():
  if "range_norm" not in ESTIMATORS:
    _load_user_module()
  assert estimator_options("range_norm") == {"eps": 1e-6}
  config = {"name": "range_norm", "options": {"eps": 0.0}}
  rewards = np.array([[1.], [0.], [3.], [2.], [2.], [2.]], np.float32)
  inputs = AdvantageInputs.create(rewards, [0, 0, 0, 1, 1, 1])
  logits = jnp.zeros((6, 2))
  actions = jnp.array([0, 1, 0, 1, 0, 1])

  @jax.jit
  def step(logits, inputs):
    adv, metrics = compute_advantages(config["name"], inputs, 2, **config["options"])

    def loss(lg):
      logp = jax.nn.log_softmax(lg)[jnp.arange(6), actions]
      return -(jax.lax.stop_gradient(adv) * logp).mean()

    return jax.grad(loss)(logits), adv, metrics

  grad, adv, metrics = step(logits, inputs)
  # Group 0: s = (1, 0, 3), mean 4/3, range 3; group 1 constant -> 0.
  np.testing.assert_allclose(adv, [-1 / 9, -4 / 9, 5 / 9, 0, 0, 0], rtol=1e-6, atol=1e-7)
  assert float(metrics["estimator/mean_spread"]) == 1.5
  # d loss / d logit[action] = -A (1 - p) / 6 with p = 1/2.
  np.testing.assert_allclose(grad[jnp.arange(6), actions], -np.asarray(adv) * .5 / 6, rtol=1e-6,
                             atol=1e-8)
