"""Optimizers from config (optax): name, schedule, clipping, accumulation."""
from __future__ import annotations

import optax

from rlx.registry import Registry

OPTIMIZERS = Registry("optimizer")
SCHEDULES = Registry("learning-rate schedule")


@SCHEDULES.register("constant")
def _constant(lr, steps, warmup):
  del steps
  if warmup:
    return optax.join_schedules([optax.linear_schedule(0.0, lr, warmup), optax.constant_schedule(lr)], [warmup])
  return optax.constant_schedule(lr)


@SCHEDULES.register("cosine")
def _cosine(lr, steps, warmup):
  return optax.warmup_cosine_decay_schedule(0.0, lr, max(warmup, 0), max(steps, warmup + 1), end_value=0.1 * lr) if warmup else optax.cosine_decay_schedule(lr, max(steps, 1), alpha=0.1)


@SCHEDULES.register("linear")
def _linear(lr, steps, warmup):
  decay = optax.linear_schedule(lr, 0.0, max(steps - warmup, 1))
  if warmup:
    return optax.join_schedules([optax.linear_schedule(0.0, lr, warmup), decay], [warmup])
  return decay


@OPTIMIZERS.register("adamw")
def _adamw(sched, c):
  return optax.adamw(sched, b1=c.b1, b2=c.b2, eps=c.eps, weight_decay=c.weight_decay)


@OPTIMIZERS.register("adam")
def _adam(sched, c):
  return optax.adam(sched, b1=c.b1, b2=c.b2, eps=c.eps)


@OPTIMIZERS.register("sgd")
def _sgd(sched, c):
  return optax.sgd(sched)


@OPTIMIZERS.register("lion")
def _lion(sched, c):
  return optax.lion(sched, b1=c.b1, b2=c.b2, weight_decay=c.weight_decay)


def make_optimizer(c, total_steps: int) -> optax.GradientTransformation:
  """`c` is config.optim. Non-finite gradients skip the update (counted)."""
  sched = SCHEDULES.get(c.schedule)(c.lr, total_steps, c.warmup_steps)
  parts = []
  if c.clip_norm and c.clip_norm > 0:
    parts.append(optax.clip_by_global_norm(c.clip_norm))
  parts.append(OPTIMIZERS.get(c.name)(sched, c))
  tx = optax.chain(*parts)
  if c.grad_accum > 1:
    tx = optax.MultiSteps(tx, every_k_schedule=c.grad_accum)
  return tx
