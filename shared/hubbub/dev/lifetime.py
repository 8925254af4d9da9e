"""Children that live and die with their launcher, and a launcher that runs once per directory.

``hubbub dev`` starts Redis, gateways and workers. However it ends (Ctrl-C, a closed terminal,
``kill -KILL``), none of them may be left holding its ports or its Redis directory, and a
second ``hubbub dev`` must refuse to start rather than share them:

- :class:`ChildGroup` puts every child in one process group of its own (so the terminal's
  Ctrl-C reaches only the launcher, which stops them in order) and asks Linux to SIGTERM each
  child when the launcher dies (``PR_SET_PDEATHSIG``: the one thing that still works after a
  SIGKILL, which no handler sees);
- :class:`DirectoryLock` holds an ``flock`` on a file for the life of the process: the kernel
  drops it whatever way the process ends, so a stale lock cannot outlive its holder;
- :func:`port_in_use` tells whether a listener already holds a port.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import os
import signal
import socket
import sys
from collections.abc import Callable
from pathlib import Path
from typing import IO

PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>


def _prctl() -> Callable[..., int] | None:
    """libc's ``prctl``, looked up before any fork (a forked child should only call it)."""
    if not sys.platform.startswith("linux"):
        return None
    function: Callable[..., int] = ctypes.CDLL(None, use_errno=True).prctl
    return function


class ChildGroup:
    """One process group for all the children of this process, which it signals as a whole.

    The first child started with :meth:`preexec` leads the group; the others join it. Each also
    gets ``PR_SET_PDEATHSIG`` = SIGTERM, so it stops when this process dies (elsewhere than
    Linux, only the group: a SIGKILL then leaves the children running). ``PR_SET_PDEATHSIG``
    fires when the *thread* that started the child ends: start children from the main thread.
    """

    def __init__(self) -> None:
        self.pgid: int | None = None
        self.parent = os.getpid()
        self._prctl = _prctl()

    def preexec(self) -> Callable[[], None]:
        """A ``preexec_fn`` for :class:`subprocess.Popen` (runs in the child, before exec)."""
        pgid = self.pgid or 0
        parent, prctl = self.parent, self._prctl

        def setup() -> None:
            try:
                os.setpgid(0, pgid)
            except PermissionError:  # every member has exited: lead a group of its own
                os.setpgid(0, 0)
            if prctl is not None:
                if prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0:
                    raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
                if os.getppid() != parent:  # the parent died before prctl: no signal comes
                    os.kill(os.getpid(), signal.SIGTERM)

        return setup

    def started(self, pid: int) -> None:
        """Record a child started with :meth:`preexec`; the first one's pid is the group's."""
        if self.pgid is None:
            self.pgid = pid

    def signal(self, sig: int) -> None:
        """Send ``sig`` to every process still in the group (none left: nothing to do)."""
        if self.pgid is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.pgid, sig)


class DirectoryTaken(RuntimeError):
    """Another live process holds the lock; ``holder`` is the pid it wrote ("?" if none)."""

    def __init__(self, path: Path, holder: str) -> None:
        super().__init__(f"{path} is held by pid {holder}")
        self.path = path
        self.holder = holder


class DirectoryLock:
    """An exclusive ``flock`` on ``path``, held until :meth:`release` or this process ends.

    The file keeps the holder's pid, for the message a second process prints. The descriptor
    is not inherited by children (Python opens files close-on-exec), so a child left running
    does not keep the lock.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file: IO[str] | None = None

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        handle = self.path.open("a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            handle.seek(0)
            holder = handle.read().strip() or "?"
            handle.close()
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise DirectoryTaken(self.path, holder) from None
            raise
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        self._file = handle

    def release(self) -> None:
        if self._file is not None:
            self._file.close()  # closing the descriptor drops the flock
            self._file = None

    def __enter__(self) -> DirectoryLock:
        self.acquire()
        return self

    def __exit__(self, *_: object) -> None:
        self.release()


def port_in_use(host: str, port: int) -> bool:
    """Whether something listens on ``host:port``, as a server binding there would find it:
    with ``SO_REUSEADDR`` (like uvicorn and redis-server), so that a port in TIME_WAIT after a
    previous run counts as free."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return True
    return False
