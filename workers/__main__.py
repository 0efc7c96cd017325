"""`python -m workers [--role chat|summary|all] [celery worker args]`: the Celery worker (prefork).

`mysisterdb worker` execs this, so the CLI never imports the workers package.

Roles (why two processes: docs/architecture.md, "Slots that follow the load"):
- chat: the chat queue; MYSISTERDB_WORKER_CONCURRENCY pool processes, all forked at start
  (or, with MYSISTERDB_WORKER_MIN_CONCURRENCY set lower, Celery's autoscaler keeps between
  the two). Node name celery@<host>.
- summary: the summary queue; a fixed pool of MYSISTERDB_SUMMARY_CONCURRENCY processes, so a
  summary never holds a chat slot. Node name summary@<host>.
- all (default): both queues in one pool (sized as chat's), for a single worker process that must
  leave nothing unconsumed; `mysisterdb up` and compose run chat and summary instead.
"""

from __future__ import annotations

import argparse
import sys

from core.logs import configure_logging
from core.orphan import exit_when_orphaned
from core.ports import CHAT_QUEUE, SUMMARY_QUEUE
from core.settings import Settings, get_settings
from workers.celery_app import worker_app

ROLES = {"chat": (CHAT_QUEUE,), "summary": (SUMMARY_QUEUE,), "all": (CHAT_QUEUE, SUMMARY_QUEUE)}


def pool_args(settings: Settings, role: str) -> list[str]:
    """How many pool processes the role runs: by default all of them, forked at start."""
    if role == "summary":
        return [f"--concurrency={settings.summary_concurrency}", "--hostname=summary@%h"]
    most = settings.worker_concurrency
    least = settings.worker_min_concurrency or most
    if least >= most:
        # A fixed pool: a burst finds every slot forked and warm. Forking on demand cost a
        # burst of 32 from idle seconds (the autoscaler looks once a second, forks one child
        # after the other from a large parent, and each child then built its runtime inside
        # its first prompt): docs/performance.md, "A burst from idle".
        return [f"--concurrency={most}"]
    return [f"--autoscale={most},{least}"]


def worker_argv(settings: Settings, role: str, extra_args: list[str]) -> list[str]:
    return ["worker", "--pool=prefork", *pool_args(settings, role),
            f"--queues={','.join(ROLES[role])}", f"--loglevel={settings.log_level}",
            "--without-gossip", "--without-mingle", *extra_args]


def parse_role(args: list[str]) -> tuple[str, list[str]]:
    """The role, and the rest for celery."""
    parser = argparse.ArgumentParser(prog="python -m workers", add_help=False)
    parser.add_argument("--role", choices=sorted(ROLES), default="all")
    known, rest = parser.parse_known_args(args)
    return known.role, rest


def main(args: list[str]) -> None:
    settings = get_settings()
    role, extra_args = parse_role(args)
    configure_logging(settings, process="worker" if role == "all" else f"worker-{role}")
    exit_when_orphaned()  # a thread of the main process only: pool children fork without it
    worker_app().worker_main(worker_argv(settings, role, extra_args))


if __name__ == "__main__":
    main(sys.argv[1:])
