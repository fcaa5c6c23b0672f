"""The floor of the forward-auth benchmark: a bare Flask app whose one view answers 202.

It runs under gunicorn through the gateway's own server class and option builder
(:class:`gateway.serve.GatewayServer`, :func:`gateway.serve.gunicorn_options`), so
worker class, worker count, connections, keep-alive, timeouts and logging are the
gateway's, setting for setting.  Only the WSGI app differs: what the benchmark
measures is the cost of the gateway's own work (session read, policy, headers).

    python bench/floor_app.py [--config CONFIG] --bind 127.0.0.1:8181 [--workers 2]
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gateway.serve import GatewayServer, gunicorn_options
from gateway.settings import Settings, load_settings

if TYPE_CHECKING:
    from flask import Flask


def create_app() -> Flask:
    """Flask with a single view at the forward-auth path, answering 202 with no body."""
    # imported here, in the worker, after gevent has patched it (like gateway.create_app)
    from flask import Flask, Response

    app = Flask("floor")

    @app.route("/.sso/auth", methods=["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"])
    def auth() -> Response:
        return Response(status=202)

    return app


class FloorServer(GatewayServer):
    """The gateway's gunicorn application, serving the floor app instead."""

    def load(self) -> Any:
        return create_app()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", help="gateway config whose [listen] settings to copy")
    parser.add_argument("--bind", help="HOST:PORT (default: listen.host:listen.port)")
    parser.add_argument("--workers", type=int, help="worker processes (default: listen.workers)")
    args = parser.parse_args(argv)
    settings = load_settings(args.config) if args.config else Settings()
    options = gunicorn_options(settings, bind=args.bind, workers=args.workers)
    options["proc_name"] = "sso-gateway-floor"
    # its own gunicornc control socket beside the gateway's (not a speed setting)
    options["control_socket"] = str(Path(options["control_socket"]).with_name("floor.ctl"))
    FloorServer(settings, options).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
