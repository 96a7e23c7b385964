"""Where a model's activations live on a device mesh: `ModelMesh`.

rlx/models does not import rlx/parallel (which imports rlx.models), so the
trainer resolves its logical-axis rules once and hands the decoder a
`ModelMesh`: the mesh and the mesh axes of the activations' 'batch', 'heads'
and 'kv_heads' dims. It is the static `ModelConfig.mesh` field (a runtime
field like `attention_platform`: not an HF field, never serialized), so it
travels inside the graphdef into every jitted step. With it the decoder

- constrains the residual stream x_BTD of full-length passes (no KV cache:
  training, reference and old log-probs) to [batch over `batch`, rest
  replicated] after the embedding and at every layer boundary
  (`constrain_batch`), so under fsdp each device works on its own rows
  (the sampler's decode is left to XLA: see rlx/models/decoder.py);
- runs kernels XLA cannot partition (Pallas/Mosaic splash attention) under
  `jax.shard_map` on each device's block of rows (and heads).

None (the default, and what a 1-device run gets): no constraints, no shard_map.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
from jax.sharding import NamedSharding, PartitionSpec as P


def dividing_axes(axes, n: int, sizes) -> tuple[str, ...]:
  """The mesh axes of `axes`, in order, that keep splitting a dim of size n evenly
  (sizes: mesh axis -> size); the rest are dropped and the dim is replicated over
  them. The rule of rlx/parallel/rules.py for parameters and batches, and of
  `ModelMesh` for activations."""
  kept, prod = [], 1
  for a in axes:
    if n % (prod * sizes[a]) == 0:
      kept.append(a)
      prod *= sizes[a]
  return tuple(kept)


@dataclasses.dataclass(frozen=True)
class ModelMesh:
  """A device mesh and the mesh axes of the activations' logical dims (hashable)."""
  mesh: Any                          # jax.sharding.Mesh
  batch: tuple[str, ...] = ()        # the 'batch' rule's mesh axes
  heads: tuple[str, ...] = ()        # the 'heads' rule's (query heads)
  kv_heads: tuple[str, ...] = ()     # the 'kv_heads' rule's

  def _dividing(self, axes: tuple[str, ...], n: int) -> tuple[str, ...]:
    return dividing_axes(axes, n, self.mesh.shape)

  def batch_axes(self, rows: int) -> tuple[str, ...]:
    return self._dividing(self.batch, rows)

  def head_axes(self, H: int, J: int) -> tuple[str, ...]:
    """Mesh axes that split query and KV heads alike (a device's H/n query heads read
    its own J/n KV heads); () when the rules or the counts differ."""
    heads = tuple(a for a in self.heads if a not in self.batch)
    kv_heads = tuple(a for a in self.kv_heads if a not in self.batch)
    if heads != kv_heads or self._dividing(heads, H) != heads or self._dividing(heads, J) != heads:
      return ()
    return heads


def active(mm: ModelMesh | None) -> bool:
  """True when `mm` names a mesh of more than one device."""
  return mm is not None and math.prod(mm.mesh.shape.values()) > 1


def spec(*dims: tuple[str, ...] | None) -> P:
  """PartitionSpec with one entry per dim: () / None -> replicated."""
  return P(*[None if not d else d[0] if len(d) == 1 else tuple(d) for d in dims])


def constrain_batch(mm: ModelMesh | None, x: jax.Array) -> jax.Array:
  """x [B, ...] with its batch dim split over the batch mesh axes, the rest replicated;
    x unchanged without an active mesh or when no batch axis divides B."""
  if not active(mm):
    return x
  axes = mm.batch_axes(x.shape[0])
  if not axes:
    return x
  return jax.lax.with_sharding_constraint(
      x, NamedSharding(mm.mesh, spec(axes, *([None] * (x.ndim - 1)))))
