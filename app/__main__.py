"""`python -m app [--settings PATH]`: serve the configured model with uvicorn and uvloop."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import uvicorn

from app.main import create_app, http_protocol
from app.registry import check_repository
from app.server import DrainingServer
from config.settings import SettingsError, load_settings
from models.repository import RepositoryError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m app", description=__doc__)
    parser.add_argument(
        "--settings", type=Path, help="settings file (default: the built-in defaults)"
    )
    parser.add_argument("--host", help="override [server] host")
    parser.add_argument("--port", type=int, help="override [server] port")
    args = parser.parse_args(argv)
    try:
        overrides = {k: v for k, v in (("host", args.host), ("port", args.port)) if v is not None}
        settings = load_settings(args.settings, **({"server": overrides} if overrides else {}))
    except SettingsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=settings.server.log_level.upper(),
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )
    try:
        checked = check_repository(settings)
    except (RepositoryError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    app = create_app(settings, checked=checked)
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
    DrainingServer(config, app, settings.server.drain_delay_seconds).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
