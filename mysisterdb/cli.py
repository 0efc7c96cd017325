"""The `mysisterdb` command: up, api, worker, simulator."""

from __future__ import annotations

import argparse
import logging
import sys

from mysisterdb.logs import configure_logging
from mysisterdb.settings import get_settings

logger = logging.getLogger(__name__)


def cmd_up(args: argparse.Namespace) -> int:
    from mysisterdb.stack import run_stack

    settings = get_settings()
    configure_logging(settings, process="up")
    run_stack(settings)
    return 0


def cmd_api(args: argparse.Namespace) -> int:
    import uvicorn

    settings = get_settings()
    uvicorn.run("api.main:create_app", factory=True, host=settings.host, port=settings.port,
                log_level=settings.log_level.lower(), timeout_graceful_shutdown=5)
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    from workers.celery_app import CHAT_QUEUE, SUMMARY_QUEUE, celery_app

    settings = get_settings()
    configure_logging(settings, process="worker")
    argv = ["worker", "--pool=prefork", f"--concurrency={settings.worker_concurrency}",
            f"--queues={CHAT_QUEUE},{SUMMARY_QUEUE}", f"--loglevel={settings.log_level}",
            "--without-gossip", "--without-mingle", *args.celery_args]
    celery_app.worker_main(argv)
    return 0


def cmd_simulator(args: argparse.Namespace) -> int:
    import uvicorn

    from mysisterdb.simulator import create_app

    settings = get_settings()
    port = args.port or settings.sim_port
    print(f"Gemini simulator on http://127.0.0.1:{port}", flush=True)
    uvicorn.run(create_app(), host="127.0.0.1", port=port, log_level="warning")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mysisterdb", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("up", help="start redis (if needed), simulator (if needed), worker and API"
                   ).set_defaults(func=cmd_up)
    sub.add_parser("api", help="run the HTTP API (uvicorn)").set_defaults(func=cmd_api)
    worker = sub.add_parser("worker", help="run a Celery worker (prefork pool)")
    worker.add_argument("celery_args", nargs=argparse.REMAINDER,
                        help="extra arguments passed to `celery worker`")
    worker.set_defaults(func=cmd_worker)
    sim = sub.add_parser("simulator", help="run the offline Gemini simulator")
    sim.add_argument("--port", type=int, default=None)
    sim.set_defaults(func=cmd_simulator)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
