"""The ingress-nginx recipe for real: a real nginx configured the way ingress-nginx
configures itself for the annotations in deploy/ingress-nginx/README.md
(deploy/ingress-nginx/controller-equivalent.conf), the gateway under gunicorn,
and an echo upstream standing in for the dashboard.

It checks the sign-in redirect with the escaped ``rd`` the controller appends,
the identity headers copied by ``auth-response-headers``, and the host a request
is judged under: ingress-nginx builds X-Original-URL from the client's Host
header, so an absolute-form request line naming this host with a Host header
naming another one must not get the other host's routes — the ``?host=$host``
in auth-url is what prevents it (shown both ways below).
"""

from __future__ import annotations

import http.client
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, quote, urlsplit

import pytest
import requests

from tests.integration.conftest import (
    ALICE,
    REPO_ROOT,
    EchoUpstream,
    GatewayProcess,
    NginxProcess,
    SeenRequest,
    form_fields,
    http_client,
    start_gateway,
    submit_login,
)
from tests.peers import free_port

pytestmark = pytest.mark.nginx

CONTROLLER_CONF = REPO_ROOT / "deploy" / "ingress-nginx" / "controller-equivalent.conf"
MODULES = (
    Path("/usr/lib/nginx/modules/ndk_http_module.so"),
    Path("/usr/lib/nginx/modules/ngx_http_set_misc_module.so"),
)
IDENTITY = {
    "X-Auth-Request-User": "alice",
    "X-Auth-Request-Email": "alice@example.test",
    "X-Auth-Request-Groups": "Intercom-Operators,UC-Users",
    "X-Auth-Request-Tier": "operator",
    "X-Auth-Request-Extension": "4711",
    "X-Auth-Request-Department": "Security",
}


def require_modules() -> None:
    missing = [str(m) for m in MODULES if not m.exists()]
    if not missing:
        return
    message = (
        f"nginx module(s) {', '.join(missing)} not installed (Debian "
        "libnginx-mod-http-set-misc): needed to reproduce ingress-nginx's auth-signin"
    )
    if os.environ.get("CI") == "true":
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


class ControllerNginx(NginxProcess):
    """NginxProcess with the set-misc module loaded (ingress-nginx has it built in)."""

    def render(self) -> str:
        modules = "".join(f"load_module {m};\n" for m in MODULES)
        return modules + super().render()


@dataclass(frozen=True)
class Stack:
    gateway: GatewayProcess
    nginx: NginxProcess
    upstream: EchoUpstream

    def url(self, path: str) -> str:
        return self.nginx.url + path


def _start_nginx(
    request: pytest.FixtureRequest,
    directory: Path,
    gateway: GatewayProcess,
    upstream: EchoUpstream,
    binary: str,
    *,
    pinned: bool,
) -> ControllerNginx:
    auth_url = f"http://{gateway.address}/.sso/auth" + ("?host=$host" if pinned else "")
    nginx = ControllerNginx(
        directory,
        {
            "GATEWAY": gateway.address,
            "UPSTREAM": upstream.address,
            "SERVER_NAME": "127.0.0.1",
            "AUTH_URL": auth_url,
            # in a cluster: https://$host/.sso/start; plain HTTP with a port here
            "AUTH_SIGNIN": "$scheme://$http_host/.sso/start",
        },
        template=CONTROLLER_CONF,
        binary=binary,
    )
    request.addfinalizer(nginx.stop)
    nginx.start()
    return nginx


@pytest.fixture(scope="module")
def gateway(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> GatewayProcess:
    require_modules()
    return start_gateway(request, tmp_path_factory.mktemp("ingress-gateway"))


@pytest.fixture(scope="module")
def stack(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    gateway: GatewayProcess,
    nginx_binary: str,
    echo_upstream: EchoUpstream,
) -> Stack:
    nginx = _start_nginx(
        request,
        tmp_path_factory.mktemp("ingress-nginx"),
        gateway,
        echo_upstream,
        nginx_binary,
        pinned=True,
    )
    return Stack(gateway, nginx, echo_upstream)


def _seen(response: requests.Response) -> SeenRequest:
    assert response.status_code == 200, (response.status_code, response.text[:300])
    return SeenRequest.from_json(response.json())


def _cookie_header(client: requests.Session) -> str:
    return "; ".join(f"{c.name}={c.value}" for c in client.cookies)


def _raw(
    base_url: str, target: str, host: str, headers: Sequence[tuple[str, str]] = ()
) -> tuple[int, dict[str, str], bytes]:
    """Send exactly this request line target and Host header."""
    parts = urlsplit(base_url)
    conn = http.client.HTTPConnection("127.0.0.1", parts.port, timeout=10)
    try:
        conn.putrequest("GET", target, skip_host=True, skip_accept_encoding=True)
        conn.putheader("Host", host)
        for name, value in headers:
            conn.putheader(name, value)
        conn.endheaders()
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        conn.close()


def _sign_in(stack: Stack, client: requests.Session) -> None:
    answer = submit_login(client, stack.nginx.url, ALICE, rd=stack.url("/console/"))
    assert answer.status_code == 303, answer.text[:300]


# -- auth-signin ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    ["/doors/front?floor=2", "/doors/?q=front%20door&x=1", "/caf%C3%A9/?a=b+c", "/"],
)
def test_unauthenticated_request_goes_to_sign_in_with_the_escaped_url(
    stack: Stack, client: requests.Session, upstream: EchoUpstream, path: str
) -> None:
    answer = client.get(stack.url(path), allow_redirects=False)
    assert answer.status_code == 302
    location = answer.headers["Location"]
    start, _, query = location.partition("?")
    assert start == stack.url("/.sso/start")
    # the controller escapes the request URI into rd; one decoding gives it back whole
    assert query == "rd=" + stack.nginx.url + quote(path, safe="-_.~")
    assert parse_qs(query) == {"rd": [stack.url(path)]}

    to_form = client.get(location, allow_redirects=False)
    assert to_form.status_code == 302
    form = client.get(stack.url(to_form.headers["Location"]))
    assert form.status_code == 200
    assert form_fields(form.text)["rd"] == stack.url(path)
    assert upstream.seen == []


def test_sign_in_then_the_dashboard_gets_the_identity(
    stack: Stack, client: requests.Session, upstream: EchoUpstream
) -> None:
    target = stack.url("/doors/front?floor=2")
    redirect = client.get(target, allow_redirects=False).headers["Location"]
    rd = parse_qs(urlsplit(redirect).query)["rd"][0]
    answer = submit_login(client, stack.nginx.url, ALICE, rd=rd)
    assert answer.status_code == 303
    assert answer.headers["Location"] == target

    seen = _seen(client.get(target))
    assert seen.path == "/doors/front?floor=2"
    for name, value in IDENTITY.items():
        assert seen.get_all(name) == [value], name
    assert seen.get("X-Auth-Request-Jwt")


def test_spoofed_identity_headers_are_replaced(
    stack: Stack, client: requests.Session, upstream: EchoUpstream
) -> None:
    _sign_in(stack, client)
    upstream.reset()
    spoofed = [(name, "admin") for name in IDENTITY] + [
        ("X_Auth_Request_Tier", "admin"),
        ("x-auth-request-user", "root"),
    ]
    status, _, body = _raw(
        stack.nginx.url,
        "/console/",
        stack.nginx.url.removeprefix("http://"),
        [("Cookie", _cookie_header(client)), *spoofed],
    )
    assert status == 200, body[:300]
    [seen] = upstream.seen
    for name, value in IDENTITY.items():
        assert seen.get_all(name) == [value], name
    assert not [name for name in seen.names() if "_" in name]


def test_denied_is_403_and_never_reaches_the_dashboard(
    stack: Stack, client: requests.Session, upstream: EchoUpstream
) -> None:
    _sign_in(stack, client)
    upstream.reset()
    answer = client.get(stack.url("/admin/users"), allow_redirects=False)
    assert answer.status_code == 403
    assert upstream.seen == []


@pytest.mark.parametrize("path", ["/.sso/auth", "/.sso/healthz", "/.sso/readyz", "/.sso/metrics"])
def test_internal_gateway_endpoints_are_not_published(
    stack: Stack, client: requests.Session, upstream: EchoUpstream, path: str
) -> None:
    """The chart's Ingress does not route these: from outside they are dashboard
    paths like any other (sign in first), so nobody can hand /.sso/auth an
    X-Original-URL of their choosing."""
    answer = client.get(
        stack.url(path),
        headers={"X-Original-URL": stack.url("/public/lobby"), "X-Original-Method": "GET"},
        allow_redirects=False,
    )
    assert answer.status_code == 302
    assert urlsplit(answer.headers["Location"]).path == "/.sso/start"
    assert upstream.seen == []


def test_no_answer_from_the_gateway_fails_closed(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    nginx_binary: str,
    upstream: EchoUpstream,
    client: requests.Session,
) -> None:
    """The controller turns anything but 2xx/401/403 (here: nobody listening) into 500."""
    require_modules()
    nginx = ControllerNginx(
        tmp_path,
        {
            "GATEWAY": f"127.0.0.1:{free_port()}",
            "UPSTREAM": upstream.address,
            "SERVER_NAME": "127.0.0.1",
            "AUTH_URL": f"http://127.0.0.1:{free_port()}/.sso/auth?host=$host",
            "AUTH_SIGNIN": "$scheme://$http_host/.sso/start",
        },
        template=CONTROLLER_CONF,
        binary=nginx_binary,
    )
    request.addfinalizer(nginx.stop)
    nginx.start()
    answer = client.get(nginx.url + "/console/", allow_redirects=False)
    assert answer.status_code == 500
    assert upstream.seen == []


# -- which host judges the request ---------------------------------------------------------

OTHER_HOST_REQUESTS = [
    # absolute-form request line naming this host, Host header naming the looser one
    pytest.param("http://127.0.0.1:{port}/admin/", "other.test", id="absolute-form"),
    pytest.param("http://127.0.0.1/admin/", "other.test:{port}", id="absolute-form-port"),
    pytest.param("http://127.0.0.1:{port}/admin/", "OTHER.test.", id="absolute-form-case"),
]


@pytest.mark.parametrize(("target", "host"), OTHER_HOST_REQUESTS)
def test_another_hosts_routes_never_judge_the_request(
    stack: Stack, client: requests.Session, upstream: EchoUpstream, target: str, host: str
) -> None:
    """alice is an operator: /admin/ on 127.0.0.1 is for admins.  other.test lets
    operators in everywhere; its routes must not decide for 127.0.0.1."""
    _sign_in(stack, client)
    upstream.reset()
    port = str(urlsplit(stack.nginx.url).port)
    status, _, body = _raw(
        stack.nginx.url,
        target.format(port=port),
        host.format(port=port),
        [("Cookie", _cookie_header(client))],
    )
    assert status in (400, 403), (status, body[:200])
    assert upstream.seen == []


def test_a_host_no_ingress_names_gets_the_default_backend(
    stack: Stack, client: requests.Session, upstream: EchoUpstream
) -> None:
    _sign_in(stack, client)
    upstream.reset()
    status, _, _ = _raw(
        stack.nginx.url, "/admin/", "other.test", [("Cookie", _cookie_header(client))]
    )
    assert status == 404
    assert upstream.seen == []


def test_without_the_host_pin_the_client_host_header_would_decide(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    gateway: GatewayProcess,
    nginx_binary: str,
    upstream: EchoUpstream,
    client: requests.Session,
) -> None:
    """Why auth-url carries ?host=$host: with the plain auth-url the controller's
    X-Original-URL names other.test, and other.test's looser route lets an operator
    into 127.0.0.1's /admin/.  (Documents the risk; the recipe never does this.)"""
    nginx = _start_nginx(request, tmp_path, gateway, upstream, nginx_binary, pinned=False)
    answer = submit_login(client, nginx.url, ALICE, rd=nginx.url + "/console/")
    assert answer.status_code == 303
    upstream.reset()
    port = str(urlsplit(nginx.url).port)
    status, _, _ = _raw(
        nginx.url,
        f"http://127.0.0.1:{port}/admin/",
        "other.test",
        [("Cookie", _cookie_header(client))],
    )
    assert status == 200
    [seen] = upstream.seen
    assert seen.path == "/admin/"
    # the same request with a matching Host is denied, as it should be
    upstream.reset()
    status, _, _ = _raw(
        nginx.url, "/admin/", f"127.0.0.1:{port}", [("Cookie", _cookie_header(client))]
    )
    assert status == 403
    assert upstream.seen == []


# -- the host pin on the gateway itself -------------------------------------------------------


@pytest.mark.parametrize(
    ("query", "original_host", "status"),
    [
        ("?host=127.0.0.1", "127.0.0.1:8443", 202),
        ("?host=127.0.0.1", "127.0.0.1", 202),
        ("?host=LOCALHOST", "localhost", 202),
        ("?host=127.0.0.1", "other.test", 403),
        ("?host=other.test", "127.0.0.1", 403),
        ("?host=127.0.0.1&host=127.0.0.1", "127.0.0.1", 403),
        ("?host=127.0.0.1%3Fx", "127.0.0.1", 403),
        ("?host=", "127.0.0.1", 403),
        ("?host=[::1]", "[::1]:443", 202),
        ("?host=[::1]", "127.0.0.1", 403),
    ],
)
def test_the_host_pin_is_checked_by_the_gateway(
    gateway: GatewayProcess, query: str, original_host: str, status: int
) -> None:
    """/.sso/auth?host=NAME: X-Original-URL must name that host (port and case aside)."""
    with http_client() as client:
        answer = client.get(
            gateway.url + "/.sso/auth" + query,
            headers={
                "X-Original-URL": f"https://{original_host}/public/lobby",
                "X-Original-Method": "GET",
            },
        )
    if original_host.startswith("[") and status == 202:
        # no route names [::1]: a public route does not match, so "log in" (401)
        # proves the pin let it through to the policy
        assert answer.status_code == 401
        return
    assert answer.status_code == status, answer.text


def test_the_host_pin_applies_to_traefik_headers_too(gateway: GatewayProcess) -> None:
    headers = {"X-Forwarded-Host": "other.test", "X-Forwarded-Uri": "/public/lobby"}
    with http_client() as client:
        pinned = client.get(gateway.url + "/.sso/auth?host=127.0.0.1", headers=headers)
        matching = client.get(
            gateway.url + "/.sso/auth?host=127.0.0.1",
            headers={**headers, "X-Forwarded-Host": "127.0.0.1"},
        )
    assert pinned.status_code == 403
    assert matching.status_code == 202
    refused = [
        line
        for line in gateway.audit_events("denied")
        if line.get("reason") == "ambiguous-request" and "another host" in line.get("detail", "")
    ]
    assert refused
