"""Directory group resolver: a person's Active Directory groups, nested ones
included, for any provider.

Other adapters keep translating their own protocol; where their groups are
incomplete they ask this resolver.  Examples: an Entra ID token with a groups
*overage* for a user synced from AD, or a SAML assertion from ADFS that lists
direct groups only.  The person is found by ``userPrincipalName`` or
``sAMAccountName`` (anywhere in the domain, enabled only), and their groups are
read with AD's in-chain matching rule.  Nothing here decides access.
"""

from __future__ import annotations

from dataclasses import replace

from ldap3.utils.conv import escape_filter_chars

from gateway.core.errors import AuthenticationFailed
from gateway.core.model import Identity
from gateway.providers.groups import GroupQuery
from gateway.providers.ldap import DirectoryGroup, LdapDirectory, guid_filter_value

__all__ = ["DirectoryGroupResolver"]

_ENABLED = "(!(userAccountControl:1.2.840.113556.1.4.803:=2))"


class DirectoryGroupResolver:
    """Also a :class:`gateway.providers.groups.GroupResolver` ("directory"): OIDC
    group overage with ``group_overage: directory``."""

    name = "directory"

    def __init__(self, directory: LdapDirectory) -> None:
        self.directory = directory

    def group_ids(self, who: GroupQuery) -> tuple[str, ...]:
        """Group names and SIDs of the person the login names by UPN (or e-mail
        address), for a provider whose token did not carry the groups."""
        for name in (who.username, who.email):
            if name:
                groups = self.groups_for_user(name)
                if groups is not None:
                    out: list[str] = []
                    for group in groups:
                        out.extend(x for x in (group.name, group.sid) if x)
                    return tuple(dict.fromkeys(out))
        raise AuthenticationFailed("directory-user-unknown")

    def groups_for_dn(self, dn: str) -> list[DirectoryGroup]:
        return self.directory.groups_of(dn)

    def groups_for_user(self, name: str) -> list[DirectoryGroup] | None:
        """Groups of the enabled person whose UPN or sAMAccountName (or
        objectGUID, canonical text) is ``name``; None when the directory does not
        know exactly one such person."""
        if "-" in name and len(name) == 36:
            try:
                flt = f"(objectGUID={guid_filter_value(name)})"
            except ValueError:
                flt = ""
        else:
            flt = ""
        if not flt:
            value = escape_filter_chars(name)
            flt = f"(|(userPrincipalName={value})(sAMAccountName={value}))"
        found = self.directory.find_anywhere(f"(&{_ENABLED}{flt})")
        if len(found) != 1:
            return None
        return self.directory.groups_of(found[0].dn)

    def enrich(self, identity: Identity, name: str | None = None) -> Identity:
        """``identity`` with the directory groups of ``name`` (default: its
        subject) added to ``groups`` (names) and ``group_ids`` (DNs, SIDs,
        GUIDs).  Unchanged when the directory does not know the person."""
        groups = self.groups_for_user(name or identity.subject)
        if not groups:
            return identity
        names = list(identity.groups)
        ids = list(identity.group_ids)
        for group in groups:
            if group.name not in names:
                names.append(group.name)
            ids.extend(x for x in (group.dn, group.sid, group.guid) if x and x not in ids)
        return replace(identity, groups=tuple(names), group_ids=tuple(ids))
