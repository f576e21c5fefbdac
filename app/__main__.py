"""`python -m app [--settings PATH]`: serve the configured model with uvicorn and uvloop; with
`[server] workers` > 1, an engine process and that many HTTP workers (`app.supervisor`)."""

from __future__ import annotations

import argparse
import logging
import socket
import sys
from pathlib import Path

import uvicorn
import uvloop

from app.engine_link import EngineLink
from app.main import create_app, http_protocol
from app.registry import OpenedModel, check_repository
from app.server import DrainingServer
from app.supervisor import Supervisor, worker_count
from config.settings import Settings, SettingsError, load_settings
from models.repository import RepositoryError
from scheduler.cpu_budget import this_process


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m app", description=__doc__)
    parser.add_argument(
        "--settings", type=Path, help="settings file (default: the built-in defaults)"
    )
    parser.add_argument("--host", help="override [server] host")
    parser.add_argument("--port", type=int, help="override [server] port")
    # What the supervisor starts its children with (not for users).
    parser.add_argument("--role", choices=("engine", "worker", "server"), help=argparse.SUPPRESS)
    parser.add_argument("--settings-json", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--engine-socket", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--listen-fd", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.role is not None:
        return child(args)
    try:
        overrides = {k: v for k, v in (("host", args.host), ("port", args.port)) if v is not None}
        settings = load_settings(args.settings, **({"server": overrides} if overrides else {}))
    except SettingsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings)
    try:
        checked = check_repository(settings)
    except (RepositoryError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    workers = worker_count(settings.server.workers, this_process().cores)
    engine = settings.server.engine
    if workers > 1 or engine == "process":
        try:
            return Supervisor(settings, workers, own_engines=engine == "per_worker").run()
        except OSError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    serve_http(settings, checked)
    return 0


def configure_logging(settings: Settings) -> None:
    logging.basicConfig(
        level=settings.server.log_level.upper(),
        format="%(asctime)s %(process)d %(name)s %(levelname)s %(message)s",
    )


def serve_http(settings: Settings, checked: list[OpenedModel], link: EngineLink | None = None,
               sockets: list[socket.socket] | None = None) -> None:  # fmt: skip
    app = create_app(settings, checked=checked, link=link)
    config = uvicorn.Config(
        app,
        host=settings.server.host,
        port=settings.server.port,
        loop="uvloop",
        http=http_protocol(app),
        timeout_keep_alive=settings.http.keep_alive_timeout_seconds,  # type: ignore[arg-type]
        log_level=settings.server.log_level,
        access_log=False,
        proxy_headers=False,  # client addresses are not used; one layer less per request
        timeout_graceful_shutdown=int(settings.server.graceful_shutdown_seconds),
    )
    DrainingServer(config, app, settings.server.drain_delay_seconds).run(sockets=sockets)


def child(args: argparse.Namespace) -> int:
    """An engine, an HTTP worker, or a whole server (`engine = "per_worker"`), started by the
    supervisor with its settings as JSON."""
    settings = Settings.model_validate_json(args.settings_json.read_text())
    configure_logging(settings)
    checked = check_repository(settings)
    if args.role == "engine":
        from app import engine

        uvloop.run(engine.serve(settings, args.engine_socket, checked))
        return 0
    listener = socket.socket(fileno=args.listen_fd)
    link = EngineLink(settings, args.engine_socket) if args.role == "worker" else None
    serve_http(settings, checked, link, [listener])
    return 0


if __name__ == "__main__":
    sys.exit(main())
