"""`python -m workers`: the Celery worker (prefork) on the chat and summary queues.

`mysisterdb worker` execs this, so the CLI never imports the workers package."""

from __future__ import annotations

import sys

from mysisterdb.logs import configure_logging
from mysisterdb.queueing import CHAT_QUEUE, SUMMARY_QUEUE
from mysisterdb.settings import get_settings
from workers.celery_app import worker_app


def main(extra_args: list[str]) -> None:
    settings = get_settings()
    configure_logging(settings, process="worker")
    argv = ["worker", "--pool=prefork", f"--concurrency={settings.worker_concurrency}",
            f"--queues={CHAT_QUEUE},{SUMMARY_QUEUE}", f"--loglevel={settings.log_level}",
            "--without-gossip", "--without-mingle", *extra_args]
    worker_app().worker_main(argv)


if __name__ == "__main__":
    main(sys.argv[1:])
