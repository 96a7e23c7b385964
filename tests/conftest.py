"""Loads the hypothesis profile (tests/hyp.py) before any test module is imported,
gives the whole session one persistent XLA compilation cache, and runs the long
tests first.

The cache: many tests run `rlx.main` or a worker in subprocesses (kill and
resume, meshes, CLI runs) that compile the same jitted steps again, and the two
xdist workers compile many of the same functions. The controller process makes
one temporary directory before the workers start; workers and subprocesses
inherit it through JAX_COMPILATION_CACHE_DIR (read when jax is first imported)
and it is removed at the end of the session. Entries are keyed by the program,
the XLA flags and the devices, so results are the same as without it; this
halved the CPU time of test_train.py's two kill/resume tests (147 -> 71 s).
A JAX_COMPILATION_CACHE_DIR already set is used as it is and kept.
"""
import os
import shutil
import tempfile

import hyp

hyp.load()

_OWN_CACHE = None
if "PYTEST_XDIST_WORKER" not in os.environ and "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  _OWN_CACHE = tempfile.mkdtemp(prefix="rlx-tests-xla-cache-")
  os.environ["JAX_COMPILATION_CACHE_DIR"] = _OWN_CACHE
  os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.2")


def pytest_unconfigure(config):
  del config
  if _OWN_CACHE is not None:
    shutil.rmtree(_OWN_CACHE, ignore_errors=True)


# Tests that start JAX subprocesses or compile a real model's steps go first: under
# `pytest -n 2` the many short tests then fill the end instead of one worker idling
# while the other finishes a long one.
_LONG_FIRST = ("test_parallel_train.py", "test_real_models.py", "test_lora.py::test_lora_rl",
               "test_methods_e2e.py", "test_train.py", "test_plan.py")


def pytest_collection_modifyitems(session, config, items):
  del session, config
  items.sort(key=lambda item: not any(k in item.nodeid for k in _LONG_FIRST))  # stable
