"""Apache httpd with mod_auth_openidc: the established C implementation of
"OpenID Connect login in front of a web app", for the proxy benchmark.

:class:`ApacheOidc` writes a self-contained ``httpd.conf`` in its own folder
(event MPM, mod_auth_openidc against the tests' OpenID provider, mod_proxy_http
to the upstream), runs ``apache2 -X``-free in the foreground (``-D FOREGROUND``)
on a loopback port, and stops it by PID.  Debian packages ``apache2`` and
``libapache2-mod-auth-openidc``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import requests

from tests.peers import launch, stop_process, tail

MODULES = Path("/usr/lib/apache2/modules")

CONF = """\
# written by bench/apache_oidc.py
ServerRoot "{dir}"
PidFile "{dir}/httpd.pid"
Listen 127.0.0.1:{port}
ServerName localhost
ErrorLog "{dir}/error.log"
LogLevel warn
{user}
LoadModule mpm_event_module {modules}/mod_mpm_event.so
LoadModule authn_core_module {modules}/mod_authn_core.so
LoadModule authz_core_module {modules}/mod_authz_core.so
LoadModule authz_user_module {modules}/mod_authz_user.so
LoadModule proxy_module {modules}/mod_proxy.so
LoadModule proxy_http_module {modules}/mod_proxy_http.so
LoadModule auth_openidc_module {modules}/mod_auth_openidc.so

StartServers 2
ServerLimit 2
ThreadsPerChild 64
MaxRequestWorkers 128
KeepAlive On
MaxKeepAliveRequests 0
KeepAliveTimeout 30

OIDCProviderMetadataURL {discovery}
OIDCClientID {client_id}
OIDCClientSecret {client_secret}
OIDCRedirectURI http://localhost:{port}/redirect_uri
OIDCCryptoPassphrase bench-only-passphrase-0123456789
OIDCPKCEMethod S256
OIDCScope "openid profile email"
OIDCSSLValidateServer Off
OIDCProviderTokenEndpointAuth client_secret_basic
OIDCSessionInactivityTimeout 900
OIDCSessionMaxDuration 28800

<Location />
    AuthType openid-connect
    Require valid-user
</Location>
ProxyPass /redirect_uri !
ProxyPass / http://{upstream}/ keepalive=On
ProxyPassReverse / http://{upstream}/
"""


def apache_binary() -> str | None:
    found = shutil.which("apache2") or shutil.which("apache2", path="/usr/sbin")
    if found and (MODULES / "mod_auth_openidc.so").exists():
        return found
    return None


class ApacheOidc:
    def __init__(
        self,
        directory: Path,
        *,
        port: int,
        upstream: str,
        discovery: str,
        client_id: str,
        client_secret: str,
    ) -> None:
        binary = apache_binary()
        if binary is None:
            raise RuntimeError("apache2 with mod_auth_openidc is not installed")
        self.binary = binary
        self.directory = directory
        self.port = port
        self.values = {
            "dir": str(directory),
            "port": str(port),
            "modules": str(MODULES),
            "upstream": upstream,
            "discovery": discovery,
            "client_id": client_id,
            "client_secret": client_secret,
            # as root, the children run as www-data (Apache refuses root workers)
            "user": "User www-data\nGroup www-data" if os.geteuid() == 0 else "",
        }
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://localhost:{self.port}"

    def start(self, timeout: float = 15.0) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        conf = self.directory / "httpd.conf"
        conf.write_text(CONF.format(**self.values), encoding="utf-8")
        env = dict(os.environ, APACHE_RUN_DIR=str(self.directory))
        self._process = launch(
            [self.binary, "-f", str(conf), "-D", "FOREGROUND"],
            self.directory / "stdout.log",
            self._answers,
            timeout,
            env=env,
        )
        if self._process is None:
            raise RuntimeError(
                f"apache did not start:\n{tail(self.directory / 'error.log')}"
                f"\n{tail(self.directory / 'stdout.log')}"
            )

    def _answers(self) -> bool:
        try:
            requests.get(self.url + "/", allow_redirects=False, timeout=1)
        except requests.RequestException:
            return False
        return True

    def stop(self) -> None:
        process, self._process = self._process, None
        stop_process(process)

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None
