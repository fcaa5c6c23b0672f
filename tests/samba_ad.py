"""A real Active Directory for the tests: a Samba AD domain controller on loopback.

The domain is provisioned once per test session under a temporary folder
(``samba-tool domain provision`` takes ~8 s), given a test CA and a server
certificate for ``localhost`` / ``127.0.0.1`` (so the gateway verifies the
certificate *and* the host name), started in the foreground with only its LDAP
service on ``lo``, and seeded over LDAPS as the domain administrator:

    OU=Gateway,DC=corp,DC=example,DC=test
      OU=People      the search scope the gateway is configured with
      OU=Elsewhere   people outside that scope
      OU=Groups      Intercom-Admins, Intercom-Operators, Door-Team (nested in
                     Intercom-Operators), UC-Users
      OU=Service     svc-gateway, the gateway's least-privilege bind account

LDAP ports are fixed (389, 636), so there is one directory per machine: the
fixture using this starts it once per session, and stops it by its PID.
``restart(strong_auth=...)`` switches Samba's ``ldap server require strong
auth`` (the equivalent of AD's LDAP signing requirement) for the hardened runs.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from tests.peers import require_binary, tail

REALM = "CORP.EXAMPLE.TEST"
DOMAIN_DN = "DC=corp,DC=example,DC=test"
UPN_SUFFIX = "corp.example.test"
ADMIN_PASSWORD = "Adm1n-Passw0rd!Test"
SERVICE_PASSWORD = "Svc-Gatew4y!Passw0rd"
USER_PASSWORD = "Corr3ct-Horse-Battery!"
BASE = f"OU=Gateway,{DOMAIN_DN}"
PEOPLE = f"OU=People,{BASE}"
ELSEWHERE = f"OU=Elsewhere,{BASE}"
GROUPS = f"OU=Groups,{BASE}"
SERVICE = f"OU=Service,{BASE}"
SERVICE_DN = f"CN=svc-gateway,{SERVICE}"
ADMIN_DN = f"CN=Administrator,CN=Users,{DOMAIN_DN}"
LDAP_PORT, LDAPS_PORT = 389, 636

UAC_NORMAL = 0x200
UAC_DISABLED = 0x2


def _port_taken(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.2)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _skip_or_fail(message: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


_CA_KEY_USAGE = x509.KeyUsage(
    digital_signature=True, content_commitment=False, key_encipherment=False,
    data_encipherment=False, key_agreement=False, key_cert_sign=True,
    crl_sign=True, encipher_only=False, decipher_only=False,
)  # fmt: skip


def _write_tls(directory: Path) -> tuple[Path, Path, Path]:
    """A test CA and a server certificate for localhost / 127.0.0.1 / dc1."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Gateway Test AD CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_CA_KEY_USAGE, critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "dc1.corp.example.test")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(
            x509.SubjectAlternativeName(
                [
                    x509.DNSName("localhost"),
                    x509.DNSName("dc1.corp.example.test"),
                    x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                ]
            ),
            critical=False,
        )
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), False)
        .sign(ca_key, hashes.SHA256())
    )
    ca_path, cert_path = directory / "ca.pem", directory / "cert.pem"
    key_path = directory / "key.pem"
    ca_path.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
    )
    key_path.chmod(0o600)  # Samba refuses a key file others can read
    return ca_path, cert_path, key_path


class SambaAD:
    """One provisioned Samba AD DC; ``start()`` / ``stop()`` / ``restart()``."""

    def __init__(self) -> None:
        self.samba = require_binary("samba", "the LDAP/Active Directory tests need Samba AD DC")
        self.samba_tool = require_binary("samba-tool", "needed to provision the test domain")
        if not Path("/usr/share/samba/setup/ad-schema").is_dir():
            _skip_or_fail("samba-ad-provision is not installed: the test domain needs it")
        self.directory = Path(tempfile.mkdtemp(prefix="ssogw-samba-"))
        self.dc_dir = self.directory / "dc"
        self.log = self.directory / "samba.log"
        self._process: subprocess.Popen[bytes] | None = None
        self.strong_auth = False
        self.ca_file, self.cert_file, self.key_file = _write_tls(self.directory)

    # -- lifecycle -----------------------------------------------------------------
    def provision(self) -> None:
        args = [
            self.samba_tool, "domain", "provision",
            f"--realm={REALM}", "--domain=CORP", "--server-role=dc",
            "--dns-backend=NONE", f"--adminpass={ADMIN_PASSWORD}",
            f"--targetdir={self.dc_dir}", "--host-name=dc1",
        ]  # fmt: skip
        done = subprocess.run(args, capture_output=True, timeout=180, check=False)
        if done.returncode != 0:
            raise RuntimeError(
                "samba-tool domain provision failed:\n"
                + done.stdout.decode(errors="replace")[-2000:]
                + done.stderr.decode(errors="replace")[-2000:]
            )

    def start(self, *, strong_auth: bool = False, timeout: float = 30.0) -> None:
        if self.running:
            return
        for port in (LDAP_PORT, LDAPS_PORT):
            if _port_taken(port):
                _skip_or_fail(
                    f"port {port} on 127.0.0.1 is taken by another process; the Samba AD "
                    "test directory needs the fixed LDAP ports 389 and 636"
                )
        if os.geteuid() != 0:
            _skip_or_fail("the Samba AD test directory must run as root (ports 389 and 636)")
        self.strong_auth = strong_auth
        options = {
            "interfaces": "lo",
            "bind interfaces only": "yes",
            "server services": "ldap",
            "tls enabled": "yes",
            "tls keyfile": str(self.key_file),
            "tls certfile": str(self.cert_file),
            "tls cafile": str(self.ca_file),
            "ldap server require strong auth": "yes" if strong_auth else "no",
            "log file": str(self.log),
            "log level": "1",
        }
        args = [self.samba, "-i", "-s", str(self.dc_dir / "etc" / "smb.conf")]
        args += [f"--option={k}={v}" for k, v in options.items()]
        with open(self.directory / "samba.out", "wb") as out:
            self._process = subprocess.Popen(
                args, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.running:
                break
            if _port_taken(LDAPS_PORT) and _port_taken(LDAP_PORT):
                return
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(
            "samba did not start:\n" + tail(self.directory / "samba.out") + tail(self.log)
        )

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def stop(self) -> None:
        """SIGTERM to the samba root process (it ends its forked services), then
        SIGKILL to its process group if it lingers."""
        process, self._process = self._process, None
        if process is None:
            return
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(process.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                process.wait(timeout=10)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and (_port_taken(LDAP_PORT) or _port_taken(LDAPS_PORT)):
            time.sleep(0.05)  # forked workers close their listeners last

    def restart(self, *, strong_auth: bool) -> None:
        self.stop()
        self.start(strong_auth=strong_auth)

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.directory, ignore_errors=True)

    # -- administration over LDAPS as the domain administrator -----------------------
    def admin(self) -> Any:
        """An ldap3 connection bound as Administrator over LDAPS (verified)."""
        import ssl

        import ldap3

        tls = ldap3.Tls(validate=ssl.CERT_NONE)  # admin helper of the test only
        server = ldap3.Server(
            "127.0.0.1",
            port=LDAPS_PORT,
            use_ssl=True,
            tls=tls,
            connect_timeout=5,
            get_info=ldap3.NONE,
        )
        conn = ldap3.Connection(
            server,
            user=f"Administrator@{UPN_SUFFIX}",
            password=ADMIN_PASSWORD,
            auto_bind=ldap3.AUTO_BIND_NO_TLS,
            receive_timeout=10,
            raise_exceptions=True,
        )
        return conn

    def seed(self) -> None:
        with self.admin() as conn:
            for ou in (BASE, PEOPLE, ELSEWHERE, GROUPS, SERVICE):
                conn.add(ou, ["top", "organizationalUnit"])
            for name in ("Intercom-Admins", "Intercom-Operators", "Door-Team", "UC-Users"):
                conn.add(
                    f"CN={name},{GROUPS}",
                    ["top", "group"],
                    {"sAMAccountName": name, "groupType": -2147483646},  # global security
                )
            self._member(conn, f"CN=Intercom-Operators,{GROUPS}", f"CN=Door-Team,{GROUPS}", True)
            self._create(conn, "svc-gateway", SERVICE, SERVICE_PASSWORD, display="Gateway Service")
            self.create_user("alice", groups=["Door-Team", "UC-Users"], conn=conn,
                             attrs={"ipPhone": "4711", "department": "Security",
                                    "telephoneNumber": "+49 30 4711"})  # fmt: skip
            self.create_user("bob", groups=["Intercom-Admins"], conn=conn,
                             attrs={"telephoneNumber": "+49 30 4712"})  # fmt: skip
            self.create_user("carol", groups=[], conn=conn)
            self.create_user("dora", groups=["Intercom-Operators"], conn=conn, disabled=True)
            self.create_user("mallory", groups=["Intercom-Admins"], ou=ELSEWHERE, conn=conn)

    # -- helpers the tests use to change the directory --------------------------------
    def user_dn(self, sam: str, ou: str = PEOPLE) -> str:
        return f"CN={sam},{ou}"

    def create_user(
        self,
        sam: str,
        *,
        groups: Iterable[str] = (),
        ou: str = PEOPLE,
        password: str = USER_PASSWORD,
        disabled: bool = False,
        attrs: dict[str, str] | None = None,
        conn: Any = None,
    ) -> str:
        own = conn is None
        conn = conn or self.admin()
        try:
            dn = self._create(
                conn, sam, ou, password, display=sam.title() + " Example", disabled=disabled,
                attrs=attrs,
            )  # fmt: skip
            for group in groups:
                self._member(conn, f"CN={group},{GROUPS}", dn, True)
            return dn
        finally:
            if own:
                conn.unbind()

    def create_group(self, name: str, *, member_of: Iterable[str] = ()) -> str:
        dn = f"CN={name},{GROUPS}"
        with self.admin() as conn:
            conn.add(dn, ["top", "group"], {"sAMAccountName": name, "groupType": -2147483646})
            for parent in member_of:
                self._member(conn, f"CN={parent},{GROUPS}", dn, True)
        return dn

    def set_disabled(self, dn: str, disabled: bool) -> None:
        self._modify(dn, {"userAccountControl": [UAC_NORMAL | (UAC_DISABLED if disabled else 0)]})

    def set_member(self, group: str, member_dn: str, present: bool) -> None:
        with self.admin() as conn:
            self._member(conn, f"CN={group},{GROUPS}", member_dn, present)

    def move(self, dn: str, new_ou: str) -> str:
        with self.admin() as conn:
            rdn = dn.split(",", 1)[0]
            conn.modify_dn(dn, rdn, new_superior=new_ou)
        return f"{rdn},{new_ou}"

    def delete(self, dn: str) -> None:
        with self.admin() as conn:
            conn.delete(dn)

    def set_attribute(self, dn: str, name: str, values: Sequence[Any]) -> None:
        self._modify(dn, {name: list(values)})

    def _modify(self, dn: str, changes: dict[str, list[Any]]) -> None:
        import ldap3

        with self.admin() as conn:
            conn.modify(dn, {k: [(ldap3.MODIFY_REPLACE, v)] for k, v in changes.items()})

    @staticmethod
    def _member(conn: Any, group_dn: str, member_dn: str, present: bool) -> None:
        import ldap3

        op = ldap3.MODIFY_ADD if present else ldap3.MODIFY_DELETE
        conn.modify(group_dn, {"member": [(op, [member_dn])]})

    @staticmethod
    def _create(
        conn: Any,
        sam: str,
        ou: str,
        password: str,
        *,
        display: str,
        disabled: bool = False,
        attrs: dict[str, str] | None = None,
    ) -> str:
        import ldap3

        dn = f"CN={sam},{ou}"
        values: dict[str, Any] = {
            "sAMAccountName": sam,
            "userPrincipalName": f"{sam}@{UPN_SUFFIX}",
            "displayName": display,
            "mail": f"{sam}@corp.example.test",
        }
        values.update(attrs or {})
        conn.add(dn, ["top", "person", "organizationalPerson", "user"], values)
        conn.extend.microsoft.modify_password(dn, password)
        uac = UAC_NORMAL | (UAC_DISABLED if disabled else 0)
        conn.modify(dn, {"userAccountControl": [(ldap3.MODIFY_REPLACE, [uac])]})
        return dn
