"""rlx: JAX reinforcement learning of language models with multiple rewards."""

__version__ = "0.1.0"
