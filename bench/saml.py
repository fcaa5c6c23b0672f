"""SAML benchmark: ACS validations per second and the gateway's CPU per login.

``make bench`` runs it after ``bench/run.py`` (or ``python bench/saml.py``).  On
loopback ports it picks it starts the test IdP (``tests/saml_idp.py``: pysaml2,
signing with ``xmlsec1``) and then:

1. **ACS validations/s** -- in this process, one real signed response of the IdP
   is checked again and again by the adapter's ``validate_response`` (XML
   pre-screen, schema, RSA-SHA256 signature, every condition, claim mapping) for
   ``--duration`` seconds on one core.  The replay cache is in the view, not the
   adapter, so the same response can be validated repeatedly.
2. **CPU per login** -- the gateway under gunicorn (``sso-gateway serve``, gevent
   workers, file sessions) and ``--logins`` complete logins through it (start ->
   IdP -> ACS -> session), one after another; the user+system CPU time the
   gateway's processes spent (from ``/proc``) divided by the number of logins.

Figures are printed and written to ``bench/results/saml.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))  # run as a script: make tests.* importable

from tests.peers import child_env, free_port, stop_process  # noqa: E402
from tests.saml_idp import SamlIdp, make_keypair, sign_in_at_idp  # noqa: E402

RESULTS = REPO_ROOT / "bench" / "results" / "saml.json"
CLK_TCK = os.sysconf("SC_CLK_TCK")


def _cpu_seconds(pid: int) -> float:
    """utime + stime of a process and all its live descendants."""
    children: dict[int, list[int]] = {}
    times: dict[int, float] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        ppid = int(fields[1])
        children.setdefault(ppid, []).append(int(entry.name))
        times[int(entry.name)] = (int(fields[11]) + int(fields[12])) / CLK_TCK
    total, todo = 0.0, [pid]
    while todo:
        current = todo.pop()
        total += times.get(current, 0.0)
        todo.extend(children.get(current, []))
    return total


def acs_validations(idp: SamlIdp, directory: Path, duration: float) -> dict[str, Any]:
    import requests

    from gateway.providers.saml import SamlServiceProvider
    from gateway.settings_saml import SamlSettings

    key, cert = make_keypair(directory, "sp", "bench-sp")
    metadata = directory / "idp.xml"
    metadata.write_text(idp.metadata(), encoding="utf-8")
    settings = SamlSettings.model_validate(
        {"sp_key_file": key, "sp_cert_file": cert, "idp_metadata_file": metadata}
    )
    sp = SamlServiceProvider(
        settings, public_url="https://sso.bench.test", resolve_path=lambda p: p,
        emit=lambda event, **fields: None,
    )  # fmt: skip
    idp.register_sp(sp.sp_metadata())
    request_id, url = sp.login_redirect("bench", force_authn=False)
    with requests.Session() as browser:
        browser.trust_env = False
        fields = sign_in_at_idp(browser, url, "bob")
    response = fields["SAMLResponse"]
    sp.validate_response(response, request_id=request_id, now=time.time())  # warm-up
    count, started = 0, time.perf_counter()
    cpu0 = time.process_time()
    while time.perf_counter() - started < duration:
        sp.validate_response(response, request_id=request_id, now=time.time())
        count += 1
    elapsed = time.perf_counter() - started
    cpu = time.process_time() - cpu0
    return {
        "validations": count,
        "seconds": round(elapsed, 3),
        "validations_per_second": round(count / elapsed, 1),
        "cpu_ms_per_validation": round(cpu / count * 1000, 3),
        "response_bytes": len(response) * 3 // 4,
    }


def cpu_per_login(idp: SamlIdp, directory: Path, logins: int, workers: int) -> dict[str, Any]:
    import subprocess

    import requests

    key, cert = make_keypair(directory, "sp-gw", "bench-gateway-sp")
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    policies = directory / "policies"
    policies.mkdir(exist_ok=True)
    (policies / "site.yaml").write_text(
        "timezone: UTC\ntiers:\n  admin: {rank: 50, groups: [Intercom-Admins]}\n"
        "routes:\n  - {name: all, hosts: [127.0.0.1], path: /, allow: [admin]}\n",
        encoding="utf-8",
    )
    config = directory / "config.yaml"
    config.write_text(
        "site_name: SAML benchmark\n"
        f"public_url: {base}\n"
        f"data_dir: {directory / 'var'}\n"
        f"policies_dir: {policies}\n"
        "cookie: {secure: false}\n"
        "session: {store: file}\n"
        f"audit: {{destination: {directory / 'audit.log'}}}\n"
        "providers:\n  default: saml\n  saml:\n"
        f"    sp_cert_file: {cert}\n    sp_key_file: {key}\n"
        f"    idp_metadata_url: {idp.url}/metadata\n    allow_http_metadata_url: true\n",
        encoding="utf-8",
    )
    log = directory / "gateway.log"
    args = [
        str(Path(sys.executable).parent / "sso-gateway"), "--config", str(config),
        "serve", "--bind", f"127.0.0.1:{port}", "--workers", str(workers),
    ]  # fmt: skip
    with log.open("ab") as out:
        process = subprocess.Popen(
            args, env=child_env(), stdin=subprocess.DEVNULL, stdout=out,
            stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if requests.get(base + "/.sso/healthz", timeout=2).status_code == 200:
                    break
            except requests.RequestException:  # refused, or accepted by a worker still booting
                pass
            if time.monotonic() > deadline or process.poll() is not None:
                raise SystemExit(f"bench: the gateway did not start:\n{log.read_text()[-2000:]}")
            time.sleep(0.05)
        with requests.Session() as client:
            client.trust_env = False
            idp.register_sp(client.get(base + "/.sso/saml/metadata", timeout=10).text)

        def one_login() -> None:
            with requests.Session() as browser:
                browser.trust_env = False
                start = browser.get(base + "/.sso/start", allow_redirects=False, timeout=10)
                fields = sign_in_at_idp(browser, start.headers["Location"], "bob")
                done = browser.post(
                    fields["action"],
                    data={"SAMLResponse": fields["SAMLResponse"],
                          "RelayState": fields["RelayState"]},
                    allow_redirects=False, timeout=10,
                )  # fmt: skip
                if done.status_code != 303:
                    raise SystemExit(f"bench: a login answered {done.status_code}")

        for _ in range(3):  # warm-up: metadata load, imports, caches
            one_login()
        cpu0, wall0 = _cpu_seconds(process.pid), time.perf_counter()
        for _ in range(logins):
            one_login()
        cpu = _cpu_seconds(process.pid) - cpu0
        wall = time.perf_counter() - wall0
    finally:
        stop_process(process)
    return {
        "logins": logins,
        "gateway_cpu_seconds": round(cpu, 3),
        "gateway_cpu_ms_per_login": round(cpu / logins * 1000, 2),
        "wall_ms_per_login_with_idp": round(wall / logins * 1000, 1),
        "workers": workers,
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--duration", type=float, default=float(os.environ.get("BENCH_SAML_DURATION", "10"))
    )
    parser.add_argument(
        "--logins", type=int, default=int(os.environ.get("BENCH_SAML_LOGINS", "50"))
    )
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args(argv)  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="ssogw-bench-saml-") as tmp:
        directory = Path(tmp)
        idp = SamlIdp(directory / "idp")
        idp.start()
        try:
            idp.configure()
            acs = acs_validations(idp, directory, args.duration)
            print(
                f"ACS validations: {acs['validations_per_second']}/s on one core "
                f"({acs['cpu_ms_per_validation']} ms CPU each, {acs['response_bytes']} bytes)"
            )
            login = cpu_per_login(idp, directory, args.logins, args.workers)
            print(
                f"gateway CPU per login: {login['gateway_cpu_ms_per_login']} ms "
                f"({login['logins']} logins; {login['wall_ms_per_login_with_idp']} ms wall "
                "each, IdP included)"
            )
        finally:
            idp.stop()
    report = {"date": time.strftime("%Y-%m-%d"), "acs": acs, "login": login}
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
