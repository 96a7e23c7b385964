"""Checkpoints with orbax: train state + data-iterator state + metadata.

Saves are asynchronous and atomic (orbax writes to a temporary directory and
renames it when complete), so a kill during a save leaves the previous
checkpoints intact; `latest_step` and `restore` only see finished ones.
"""
from __future__ import annotations

import os
from typing import Any

import jax
import orbax.checkpoint as ocp


class CheckpointMismatch(ValueError):
  """A workdir's checkpoint does not fit the state of the run trying to resume it."""


class Checkpointer:

  def __init__(self, directory: str, *, keep: int = 2, async_save: bool = True):
    self.directory = os.path.abspath(directory)
    opts = ocp.CheckpointManagerOptions(
        max_to_keep=keep, create=True, enable_async_checkpointing=async_save,
        cleanup_tmp_directories=True)
    self.manager = ocp.CheckpointManager(
        self.directory, options=opts, item_names=("state", "data", "meta"))

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def save(self, step: int, state: Any, data_state: dict | None = None,
           meta: dict | None = None, *, force: bool = True) -> None:
    self.manager.save(
        step,
        args=ocp.args.Composite(
            state=ocp.args.StandardSave(state),
            data=ocp.args.JsonSave(data_state or {}),
            meta=ocp.args.JsonSave(meta or {})),
        force=force)

  def restore(self, step: int, abstract_state: Any) -> tuple[Any, dict, dict]:
    """Restores onto the shardings/dtypes of `abstract_state` (a pytree of
    arrays or jax.ShapeDtypeStruct): a different mesh reshards on restore."""
    abstract = jax.tree.map(
        lambda x: x if isinstance(x, jax.ShapeDtypeStruct) else jax.ShapeDtypeStruct(
            x.shape, x.dtype, sharding=getattr(x, "sharding", None)), abstract_state)
    try:
      out = self.manager.restore(
          step,
          args=ocp.args.Composite(
              state=ocp.args.StandardRestore(abstract),
              data=ocp.args.JsonRestore(),
              meta=ocp.args.JsonRestore()))
    except (ValueError, TypeError, KeyError) as e:
      self.close()  # release orbax's threads before raising
      first = (str(e).strip() or type(e).__name__).splitlines()[0].split(". ")[0]
      raise CheckpointMismatch(
          f"The checkpoint of step {step} in {self.directory} does not match this run "
          f"({first[:300]}). A workdir resumes only with the model and optimizer it was "
          "started with (its earlier config is kept in the workdir as config.json or "
          "config.N.json); use a new --workdir for another setting.") from None
    return out["state"], dict(out["data"] or {}), dict(out["meta"] or {})

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()
