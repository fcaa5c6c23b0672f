"""Flask blueprints: translate HTTP to the core and back."""

from __future__ import annotations

from typing import Any

from flask import Flask
from flask.sessions import NullSession, SessionInterface

from gateway.views import info, login, oidc, saml, start


class NoFlaskSession(SessionInterface):
    """Flask's own cookie session is never used (the gateway's sessions are
    server-side, see gateway.sessions): skip its per-request cookie work."""

    def open_session(self, app: Flask, request: Any) -> NullSession:
        return NullSession()

    def save_session(self, app: Flask, session: Any, response: Any) -> None:
        return None


def register(app: Flask) -> None:
    app.session_interface = NoFlaskSession()
    app.register_blueprint(start.bp)
    app.register_blueprint(login.bp)
    app.register_blueprint(info.bp)
    app.register_blueprint(oidc.bp)
    app.register_blueprint(saml.bp)
