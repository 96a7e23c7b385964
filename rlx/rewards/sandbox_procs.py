"""Host-side process bookkeeping for the sandbox: per-run uids and final sweeps.

`uid_pool(base)` hands out per-run uids; `live_processes` finds what a run left
behind (by uid, session or a marker in the command line, read from /proc) and
`kill_all` SIGKILLs it until nothing is left.
"""
from __future__ import annotations

import logging
import os
import random
import signal
import threading
import time

log = logging.getLogger(__name__)

UID_RANGE = 1 << 28  # per-run uids are drawn from [uid_base, uid_base + UID_RANGE)


class _UidPool:
  """Hands out random per-run uids in [base, base + UID_RANGE), distinct within
  this process; random so that several processes (pytest-xdist workers, two
  trainers) sharing a machine practically never collide (p ~ 4e-9 per pair
  of concurrent runs)."""

  def __init__(self, base: int):
    self.base = base
    self._used: set[int] = set()
    self._lock = threading.Lock()
    self._rng = random.SystemRandom()

  def acquire(self) -> int:
    with self._lock:
      while True:
        uid = self.base + self._rng.randrange(UID_RANGE)
        if uid not in self._used:
          self._used.add(uid)
          return uid

  def release(self, uid: int) -> None:
    with self._lock:
      self._used.discard(uid)


_UID_POOLS: dict[int, _UidPool] = {}
_UID_POOLS_LOCK = threading.Lock()


def uid_pool(base: int) -> _UidPool:
  with _UID_POOLS_LOCK:
    if base not in _UID_POOLS:
      _UID_POOLS[base] = _UidPool(base)
    return _UID_POOLS[base]


def _proc_status(pid: str) -> tuple[int, str, int] | None:
  """(real uid, state letter, session id) of /proc/PID, None if gone."""
  try:
    with open(f"/proc/{pid}/status") as f:
      text = f.read()
  except OSError:
    return None
  uid, state, sid = -1, "?", None
  for line in text.splitlines():
    if line.startswith("Uid:"):
      uid = int(line.split()[1])
    elif line.startswith("State:"):
      state = line.split()[1]
    elif line.startswith("NSsid:"):
      sid = int(line.split()[1])
  if sid is None:  # kernels before 4.1 have no NSsid line
    try:
      with open(f"/proc/{pid}/stat") as f:
        stat = f.read()
      sid = int(stat[stat.rindex(")") + 2:].split()[3])
    except (OSError, ValueError, IndexError):
      sid = -1
  return uid, state, sid


def _cmdline_has(pid: str, marker: bytes) -> bool:
  try:
    with open(f"/proc/{pid}/cmdline", "rb") as f:
      return marker in f.read()
  except OSError:
    return False


def live_processes(*, uid: int | None = None, session: int | None = None,
                   marker: str | None = None) -> list[int]:
  """Pids of non-zombie processes with this real uid, or (without a uid) in
  this session or with `marker` in their command line."""
  out = []
  try:
    names = os.listdir("/proc")
  except OSError:
    return out
  me = os.getpid()
  m = marker.encode() + b"\0" if marker else None  # argv entries end with NUL
  for name in names:
    if not name.isdigit() or int(name) == me:
      continue
    st = _proc_status(name)
    if st is None or st[1] in ("Z", "X"):
      continue
    if uid is not None:
      if st[0] == uid:
        out.append(int(name))
    elif (session is not None and st[2] == session) or (m and _cmdline_has(name, m)):
      out.append(int(name))
  return out


def kill_all(*, uid: int | None = None, session: int | None = None,
              marker: str | None = None, timeout_s: float = 2.0) -> bool:
  """SIGKILLs matching processes until none is left; True when clean."""
  deadline = time.monotonic() + timeout_s
  while True:
    pids = live_processes(uid=uid, session=session, marker=marker)
    if not pids:
      return True
    if time.monotonic() > deadline:
      log.warning("sandbox: processes %s survived the final kill", pids)
      return False
    for pid in pids:
      try:
        os.kill(pid, signal.SIGKILL)
      except OSError:
        pass
    time.sleep(0.005)
