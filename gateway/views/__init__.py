"""Flask blueprints: translate HTTP to the core and back."""

from __future__ import annotations

from flask import Flask

from gateway.views import forward_auth, info, login


def register(app: Flask) -> None:
    app.register_blueprint(forward_auth.bp)
    app.register_blueprint(login.bp)
    app.register_blueprint(info.bp)
