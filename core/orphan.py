"""A child of `mysisterdb up` does not outlive it, whatever it is busy with.

`up` starts each child with a parent-death signal (SIGTERM, `stack.die_with_parent`), so a
killed `up` asks its children to stop. A child may take its time over that: a Celery worker
stopping warmly while Redis (stopping too) goes away under it, a server waiting for its
connections. This watch is the guarantee behind the request: once the supervisor is gone,
the child exits at most ORPHAN_GRACE_S later. A prompt still running by then ends
`worker_lost` through the sweep, as after any crash.

Only children `up` started are watched (it names itself in MYSISTERDB_SUPERVISOR_PID): a
worker run by hand under nohup, or by compose, is reparented or watched by others, and must
not exit because its shell did.
"""

from __future__ import annotations

import logging
import os
import select
import threading
import time

logger = logging.getLogger(__name__)

SUPERVISOR_PID_ENV = "MYSISTERDB_SUPERVISOR_PID"
ORPHAN_GRACE_S = 10.0
CHECK_INTERVAL_S = 0.5


def exit_when_orphaned(*, grace_s: float = ORPHAN_GRACE_S) -> None:
    """Start the watch if `up` started this process; a no-op otherwise."""
    raw = os.environ.get(SUPERVISOR_PID_ENV, "")
    if not raw.isdigit():
        return
    threading.Thread(target=_watch, args=(int(raw), grace_s), daemon=True,
                     name="orphan-watch").start()


def _watch(supervisor_pid: int, grace_s: float) -> None:
    wait_while_parent(supervisor_pid, poll_s=CHECK_INTERVAL_S)
    logger.error("mysisterdb up (pid %s) is gone: exiting within %.0f s", supervisor_pid,
                 grace_s)
    time.sleep(grace_s)
    logger.error("still running %.0f s after mysisterdb up died: exiting now", grace_s)
    os._exit(1)


CHILD_CHECK_INTERVAL_S = 0.2
PIDFD_RECHECK_S = 60.0


def wait_while_parent(parent_pid: int, *, poll_s: float) -> None:
    """Return once `parent_pid` is no longer this process's parent.

    Blocks on a pidfd of the parent (readable when it exits), so an idle process is never
    woken: polling every 0.2 s in each of 32 pool children was 160 wake-ups a second, a
    share of an idle worker's CPU and of every prompt's (issue 21). The pidfd is opened, then
    the parent checked: it is ours, not a process that took a freed pid. Where pidfds are
    missing (not Linux 5.3+), it polls every `poll_s`."""
    try:
        pidfd: int | None = os.pidfd_open(parent_pid)
    except (AttributeError, OSError):
        pidfd = None
    try:
        while os.getppid() == parent_pid:
            if pidfd is None:
                time.sleep(poll_s)
            elif select.select([pidfd], [], [], PIDFD_RECHECK_S)[0]:
                return  # it exited (its children were handed on before this)
    finally:
        if pidfd is not None:
            os.close(pidfd)


def exit_with_parent() -> None:
    """In a forked pool child: exit at once when the worker's main process is gone.

    Celery asks the kernel for SIGKILL on the parent's death (PR_SET_PDEATHSIG), but that
    request is tied to the thread that forked, and is missing in a child forked in the moment
    the parent dies; a `kill -9` of a chat worker's main process under `mysisterdb up` once
    left a busy pool child running 30 s later, holding its memory (an idle child leaves when
    its pipe closes; one waiting on Gemini does not). This watch depends on neither: once
    this process is reparented, nobody will ever read its result."""
    parent = os.getppid()
    threading.Thread(target=_watch_parent, args=(parent,), daemon=True,
                     name="parent-watch").start()


def _watch_parent(parent_pid: int) -> None:
    wait_while_parent(parent_pid, poll_s=CHILD_CHECK_INTERVAL_S)
    logger.error("the worker's main process (pid %s) is gone: this pool process exits",
                 parent_pid)
    os._exit(1)
