"""Entra ID group overage resolved in Active Directory instead of Microsoft Graph
(``group_overage: directory``): the real gateway, the real OpenID provider and the
real Samba AD domain controller."""

from __future__ import annotations

from pathlib import Path

import yaml

from tests.ldap.conftest import ldap_yaml
from tests.oidc.conftest import Browser, OidcSite, oidc_site  # noqa: F401 - the fixture
from tests.samba_ad import SERVICE_PASSWORD, SambaAD


def test_overage_groups_come_from_the_directory(
    oidc_site: OidcSite,  # noqa: F811 - the imported fixture
    samba: SambaAD,
    tmp_path: Path,
) -> None:
    secret = tmp_path / "bind-password"
    secret.write_text(SERVICE_PASSWORD + "\n", encoding="utf-8")
    ldap = yaml.safe_load(ldap_yaml(samba.ca_file, secret, deprovision="{enabled: false}"))
    gw = oidc_site.gateway("gw-directory", slot=5, group_overage="directory")
    gw.config["providers"]["ldap"] = ldap["providers"]["ldap"]
    gw.start()
    try:
        browser = Browser(oidc_site, slot=5)
        browser.login("bobsync")  # a token without groups: hasgroups
        info = browser.userinfo().json()
        assert info["tier"] == "admin"  # bob is in Intercom-Admins in AD
        assert gw.audit_events("login")[-1]["groups_from"] == "directory"
        # someone the directory does not know: refused, not let in without groups
        other = Browser(oidc_site, slot=5)
        assert other.login("hal").status_code == 401
        assert gw.audit_events("login_failed")[-1]["reason"] == "directory-user-unknown"
    finally:
        gw.stop()
