"""Run the gateway under gunicorn, configured from the ``listen`` settings."""

from __future__ import annotations

import gc
import os
from pathlib import Path
from typing import Any

from gunicorn.app.base import BaseApplication

from gateway.settings import Settings

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


class GatewayServer(BaseApplication):  # type: ignore[misc]
    def __init__(self, settings: Settings, options: dict[str, Any]) -> None:
        self.settings = settings
        self.options = options
        super().__init__()

    def load_config(self) -> None:
        for key, value in self.options.items():
            self.cfg.set(key, value)

    def load(self) -> Any:
        from gateway import create_app

        return create_app(self.settings)


# listen.worker_class -> gunicorn worker class
WORKER_CLASSES = {
    "gevent": "gateway.workers.FairGeventWorker",
    "gthread": "gthread",
    "sync": "sync",
}


def gunicorn_options(
    settings: Settings, *, bind: str | None = None, workers: int | None = None
) -> dict[str, Any]:
    listen = settings.listen
    return {
        "bind": bind or _bind(listen.host, listen.port),
        "workers": workers or listen.workers,
        "worker_class": WORKER_CLASSES[listen.worker_class],
        "worker_connections": listen.worker_connections,
        "timeout": listen.timeout,
        "graceful_timeout": 10,
        "keepalive": 30,
        "accesslog": None,
        "errorlog": "-",
        "loglevel": "info",
        "proc_name": "sso-gateway",
        # gunicorn must not act on X-Forwarded-* itself (by default it rewrites the
        # scheme for requests from loopback): network.trusted_proxies decides
        "forwarded_allow_ips": "",
        "post_worker_init": _worker_started,
        "worker_exit": _worker_exiting,
        "child_exit": _worker_exited,
        # one control socket per gateway (gunicornc), not one per user account
        "control_socket": str(settings.resolve_path(settings.data_dir) / "gunicorn.ctl"),
    }


def _worker_started(worker: Any) -> None:
    _freeze_startup_objects(worker)
    _start_deprovisioning(worker)


def _services(worker: Any) -> Any:
    """The worker's app's gateway.services.Services (None for another app)."""
    extensions = getattr(getattr(worker, "wsgi", None), "extensions", None) or {}
    return extensions.get("gateway")


def _start_deprovisioning(worker: Any) -> None:
    """Every worker runs the directory watcher; the store lets one poll per
    period (see gateway.deprovision)."""
    watcher = getattr(_services(worker), "deprovision", None)
    if watcher is not None:
        watcher.start()


def _worker_exiting(server: Any, worker: Any) -> None:
    """In the worker, as it exits: write the access log lines and the request
    durations still waiting."""
    services = _services(worker)
    access_log = getattr(services, "access_log", None)
    if access_log is not None:
        access_log.close()
    metrics = getattr(services, "metrics", None)
    if metrics is not None:
        metrics.flush()


def _freeze_startup_objects(worker: Any) -> None:
    """Move everything built at start-up (the app, the policy, the templates) out
    of the garbage collector's sight: collections then scan only per-request
    objects, which keeps their pauses out of the latency tail."""
    gc.collect()
    gc.freeze()


def prepare_metrics_dir(path: Path) -> None:
    """Create and empty the folder prometheus-client's multiprocess mode keeps
    its samples in, and name it in the environment - here, in the arbiter,
    before any worker forks and imports prometheus-client (which reads the
    variable once, on import: this module must not import it)."""
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    for old in path.glob("*.db"):
        old.unlink(missing_ok=True)
    os.environ[MULTIPROC_ENV] = str(path)


def _worker_exited(server: Any, worker: Any) -> None:
    from gateway.metrics import mark_worker_dead

    mark_worker_dead(worker.pid)


def _bind(host: str, port: int) -> str:
    if ":" in host and not host.startswith("["):
        return f"[{host}]:{port}"  # IPv6 literal
    return f"{host}:{port}"


def run(
    settings: Settings,
    config_path: str | None,
    *,
    bind: str | None = None,
    workers: int | None = None,
) -> None:
    if settings.metrics.enabled:
        prepare_metrics_dir(settings.resolve_path(settings.data_dir) / "metrics")
    GatewayServer(settings, gunicorn_options(settings, bind=bind, workers=workers)).run()
