"""The `mysisterdb` command: up, api, worker, simulator, incidents, check, reindex, watchdog,
token."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import TYPE_CHECKING

from core.files import private_umask
from core.logs import configure_logging
from core.orphan import exit_when_orphaned
from core.settings import Settings, get_settings

if TYPE_CHECKING:
    from redis import Redis

logger = logging.getLogger(__name__)


def cmd_up(args: argparse.Namespace) -> int:
    from mysisterdb.redis_server import ServerTooOld
    from mysisterdb.stack import run_stack

    settings = get_settings()
    configure_logging(settings, process="up")
    try:
        run_stack(settings)
    except ServerTooOld as exc:
        print(f"mysisterdb up: refused the private server: {exc}", file=sys.stderr, flush=True)
        return 1
    return 0


def cmd_api(args: argparse.Namespace) -> int:
    import uvicorn

    settings = get_settings()
    exit_when_orphaned()
    # h11 (not httptools, were it installed): its buffer limit bounds the request line and
    # headers before the app sees them. Forwarded headers only from the proxies named.
    uvicorn.run("api.main:create_app", factory=True, host=settings.host, port=settings.port,
                log_level=settings.log_level.lower(), timeout_graceful_shutdown=5,
                http="h11", h11_max_incomplete_event_size=settings.max_header_bytes,
                proxy_headers=True, forwarded_allow_ips=settings.forwarded_allow_ips)
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    # exec, not import: the core does not depend on the workers package, and the process
    # (its PID, its signals) stays the one the supervisor or compose started.
    os.execv(sys.executable, [sys.executable, "-m", "workers", "--role", args.role,
                              *args.celery_args])
    return 0  # not reached


def cmd_simulator(args: argparse.Namespace) -> int:
    import uvicorn

    from mysisterdb.simulator import create_app

    settings = get_settings()
    port = args.port or settings.sim_port
    print(f"Gemini simulator on http://{args.host}:{port}", flush=True)
    exit_when_orphaned()
    # Nothing to finish gracefully: held and hanging streams would delay a stop for ever.
    uvicorn.run(create_app(hold_max_s=settings.sim_hold_max_s), host=args.host, port=port,
                log_level="warning", timeout_graceful_shutdown=1)
    return 0


def cmd_incidents(args: argparse.Namespace) -> int:
    from core.incidents import IncidentLog, to_markdown
    from core.redis_client import connect

    settings = get_settings()
    incidents = IncidentLog(connect(settings.resolved_redis_url(), timeout_s=5)).newest(limit=args.limit)
    if args.markdown:
        print(to_markdown(incidents))
        return 0
    for i in incidents:
        print(f"{i.at}  {i.kind:<12} job={i.job_id or '-'} conv={i.conversation_id or '-'} "
              f"step={i.step or '-'}\n    input:  {i.input!r}\n    cause:  {i.cause}\n"
              f"    action: {i.action}")
    if not incidents:
        print("no incidents recorded")
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    from core.redis_client import connect
    from mysisterdb.check import run_check

    settings = get_settings()
    client = connect(settings.resolved_redis_url(), timeout_s=10)
    return run_check(redis=client, repair=args.repair, hard_limit_s=settings.task_time_limit,
                     queue_timeout_s=settings.queue_timeout_s, out=sys.stdout)


def cmd_reindex(args: argparse.Namespace) -> int:
    from core.redis_client import connect
    from mysisterdb.reindex import reindex_all

    settings = get_settings()
    configure_logging(settings, process="reindex")
    client = connect(settings.resolved_redis_url(), timeout_s=10)
    if args.embeddings:
        return queue_embeddings(settings, client, args.conversation or None)
    return reindex_all(redis=client, conversation_ids=args.conversation or None,
                       batch=args.batch, pause_s=args.pause, out=sys.stdout)


def queue_embeddings(settings: Settings, client: Redis, conversation_ids: list[str] | None) -> int:
    from mysisterdb.reindex import EXIT_FAILED
    from mysisterdb.reindex import queue_embeddings as queue
    from taskqueue.app import create_celery
    from taskqueue.port import CeleryBroker

    if not settings.embeddings_enabled:
        print(f"embeddings are off (MYSISTERDB_EMBEDDINGS={settings.embeddings}, "
              f"{settings.llm_mode}): set a Gemini key, or MYSISTERDB_EMBEDDINGS=on",
              file=sys.stderr)
        return EXIT_FAILED
    app = create_celery(settings.model_copy(update={"redis_url": settings.resolved_redis_url()}))
    return queue(redis=client, broker=CeleryBroker(app), conversation_ids=conversation_ids, out=sys.stdout)


def cmd_watchdog(args: argparse.Namespace) -> int:
    from mysisterdb.watchdog import Watchdog

    settings = get_settings()
    configure_logging(settings, process="watchdog")
    url = args.url or f"http://{settings.host}:{settings.port}/api/health"
    Watchdog(url=url, restart_command=args.restart_command, failures=args.failures,
             interval_s=args.interval, timeout_s=args.timeout).run(max_checks=args.max_checks)
    return 0


def cmd_token(args: argparse.Namespace) -> int:
    """The access token the API generated (or will generate) for this data directory."""
    from core.access import Mode, generated_token, load_access, sign_in_url

    settings = get_settings()
    mode = load_access(settings).mode
    if mode is not Mode.GENERATED:
        what = ("the API listens on loopback with no token: nobody signs in"
                if mode is Mode.OPEN else
                "tokens are configured (MYSISTERDB_API_TOKENS / MYSISTERDB_API_TOKENS_FILE): "
                "each person has their own")
        print(f"no generated token: {what}", file=sys.stderr)
        return 1
    token = generated_token(settings.api_token_file)
    print(sign_in_url(settings, token) if args.url else token)
    return 0


def add_ops_commands(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    token = sub.add_parser("token", help="print the access token generated for a non-loopback "
                           "address (MYSISTERDB_HOST), kept 0600 in the data directory")
    token.add_argument("--url", action="store_true", help="print the sign-in URL instead")
    token.set_defaults(func=cmd_token)
    incidents = sub.add_parser("incidents", help="print recorded incidents, newest first")
    incidents.add_argument("--markdown", action="store_true",
                           help="print the runbook's table (発生日時 | 発生状況 | …)")
    incidents.add_argument("--limit", type=int, default=50)
    incidents.set_defaults(func=cmd_incidents)
    check = sub.add_parser("check", help="verify stored data; exit 1 on a problem")
    check.add_argument("--repair", action="store_true",
                       help="fix what can be fixed safely (never deletes a user's message)")
    check.set_defaults(func=cmd_check)
    reindex = sub.add_parser("reindex", help="re-index stored conversations for recall "
                             "(after an upgrade of the analyser); the service keeps running")
    reindex.add_argument("--conversation", action="append", default=[],
                         help="only this conversation (repeatable; default: all)")
    reindex.add_argument("--batch", type=int, default=500, help="messages per batch")
    reindex.add_argument("--pause", type=float, default=0.05,
                         help="seconds between batches (leaves Redis to the service)")
    reindex.add_argument("--embeddings", action="store_true",
                         help="instead, queue the embedding of every stored message that has "
                         "none (semantic recall; needs embeddings on and a running worker)")
    reindex.set_defaults(func=cmd_reindex)
    dog = sub.add_parser("watchdog", help="poll health; run a restart command after N failures")
    dog.add_argument("--url", default=None, help="health URL (default: this API's)")
    dog.add_argument("--restart-command", default=None, help="shell command to run")
    dog.add_argument("--failures", type=int, default=3, help="consecutive failures to act on")
    dog.add_argument("--interval", type=float, default=10.0, help="seconds between checks")
    dog.add_argument("--timeout", type=float, default=5.0, help="seconds per health request")
    dog.add_argument("--max-checks", type=int, default=None, help=argparse.SUPPRESS)
    dog.set_defaults(func=cmd_watchdog)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mysisterdb", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("up", help="start redis (if needed), simulator (if needed), worker and API"
                   ).set_defaults(func=cmd_up)
    sub.add_parser("api", help="run the HTTP API (uvicorn)").set_defaults(func=cmd_api)
    worker = sub.add_parser("worker", help="run a Celery worker (prefork pool)")
    worker.add_argument("--role", choices=("chat", "summary", "all"), default="all",
                        help="chat: the chat queue, autoscaled pool; summary: the summary "
                             "queue, its own small pool; all (default): both in one pool")
    worker.add_argument("celery_args", nargs=argparse.REMAINDER,
                        help="extra arguments passed to `celery worker`")
    worker.set_defaults(func=cmd_worker)
    sim = sub.add_parser("simulator", help="run the offline Gemini simulator")
    sim.add_argument("--port", type=int, default=None)
    sim.add_argument("--host", default="127.0.0.1",
                     help="interface to bind (0.0.0.0 only inside a container network)")
    sim.set_defaults(func=cmd_simulator)
    add_ops_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    private_umask()  # data, logs, AOF, token and password files: 0600, this user's only
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown and args.command == "worker":  # `mysisterdb worker --loglevel=DEBUG`
        args.celery_args = [*unknown, *args.celery_args]
    elif unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
