"""`python -m app [--settings PATH]`: serve the model repository with uvicorn and uvloop. The one
place that picks the process model: one process (REST and gRPC over a data plane whose sessions
are here), or with `[server] workers` > 1 a supervisor (`app.workers.supervisor`) starting an
engine process (the sessions) and HTTP workers (data planes scoring through the engine)."""

from __future__ import annotations

import argparse
import logging
import socket
import sys
from pathlib import Path

import uvloop

from app.assembly import cpu_budget, in_process, through_engine, with_process_model
from app.dataplane.registry import check_repository
from app.repository_layout import as_repository
from app.workers.supervisor import Supervisor, worker_count
from config.settings import Settings, SettingsError, load_settings
from models.artifacts.repository import RepositoryError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m app", description=__doc__)
    parser.add_argument(
        "--settings", type=Path, help="settings file (default: the built-in defaults)"
    )
    parser.add_argument("--host", help="override [server] host")
    parser.add_argument("--port", type=int, help="override [server] port")
    parser.add_argument(
        "--model-name", help="override [model] name (KServe passes its InferenceService's name)"
    )
    # What the supervisor starts its children with (not for users).
    parser.add_argument("--role", choices=("engine", "worker", "server"), help=argparse.SUPPRESS)
    parser.add_argument("--settings-json", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--engine-socket", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--listen-fd", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.role is not None:
        return child(args)
    try:
        overrides: dict[str, dict[str, object]] = {}
        server = {k: v for k, v in (("host", args.host), ("port", args.port)) if v is not None}
        if server:
            overrides["server"] = server
        if args.model_name:
            overrides["model"] = {"name": args.model_name}
        settings = load_settings(args.settings, **overrides)
    except SettingsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings)
    try:
        settings = as_repository(settings)  # KServe's /mnt/models may hold one model
        checked = check_repository(settings)
    except (RepositoryError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    settings = with_process_model(settings)
    workers = worker_count(settings.server.workers, cpu_budget().cores)
    engine = settings.server.engine
    if workers > 1 or engine == "process":
        try:
            return Supervisor(settings, workers, own_engines=engine == "per_worker").run()
        except OSError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    from app.serve import serve_http

    serve_http(settings, in_process(settings, checked))
    return 0


def configure_logging(settings: Settings) -> None:
    logging.basicConfig(
        level=settings.server.log_level.upper(),
        format="%(asctime)s %(process)d %(name)s %(levelname)s %(message)s",
    )


def child(args: argparse.Namespace) -> int:
    """An engine, an HTTP worker, or a whole server (`engine = "per_worker"`), started by the
    supervisor with its settings as JSON; the supervisor has checked the repository."""
    settings = Settings.model_validate_json(args.settings_json.read_text())
    configure_logging(settings)
    engine_role = args.role == "engine"
    checked = check_repository(settings, ranking=not engine_role)  # the engine ranks nothing
    if engine_role:
        from app.workers import engine

        uvloop.run(engine.serve(settings, args.engine_socket, in_process(settings, checked).plane))
        return 0
    from app.serve import serve_http

    listener = socket.socket(fileno=args.listen_fd)
    if args.role == "server":
        serve_http(settings, in_process(settings, checked), sockets=[listener])
        return 0
    from app.workers.supervisor import server_wide

    assembled = through_engine(settings, args.engine_socket, checked)
    serve_http(settings, assembled, server_wide(), [listener])
    return 0


if __name__ == "__main__":
    sys.exit(main())
