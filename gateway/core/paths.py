"""Request-path canonicalisation: one reading of a path, or a refusal.

The policy is evaluated on the path the upstream will act on.  When a raw path
could be read two ways (by the gateway and by an intercom web UI, a PBX portal on
IIS, a Java servlet container ...) it is refused with :class:`AmbiguousPath`
rather than guessed; the views answer 400.

:func:`normalise_path` takes the raw, still percent-encoded path (no query string)
and returns the decoded canonical path:

* it must start with ``/``; raw characters must be printable ASCII without space,
  backslash, ``?`` or ``#`` (browsers percent-encode everything else);
* every ``%XX`` escape must be well formed; the path is decoded exactly once, as
  strict UTF-8 (overlong forms such as ``%C0%AF`` are invalid UTF-8);
* refused after decoding: an encoded ``/`` or ``\\`` (``%2F``, ``%5C``), an encoded
  ``?`` or ``#`` (``%3F``, ``%23``: a server that decodes before it splits off the
  query would end the path there), any ``\\``,
  any ``%`` left over (double encoding such as ``%252F``), any ``;`` (path
  parameters such as ``/admin;jsessionid=x`` or ``/..;/``), control and format
  characters (``%00``, ``%0A``, U+200B ...), characters with a compatibility form
  (NFKC: fullwidth letters such as U+FF41, the fullwidth solidus, ligatures, the
  one-dot leader ...: a server that normalises would read ``/%EF%BD%81dmin`` as
  ``/admin``), and
  segments other than ``.`` and ``..`` that end in a dot or a space (Windows
  servers trim those, so ``/admin./`` would reach ``/admin/``);
* repeated slashes collapse; ``.`` and ``..`` segments are resolved as RFC 3986
  does (``/a/b/..`` -> ``/a/``); ``..`` above the root is refused;
* a trailing slash is kept (``/admin/`` stays ``/admin/``).

``refuse_dot_segments=True`` refuses every ``.`` and ``..`` segment, raw or
percent-encoded (``%2e%2e``), instead of resolving it: for forward auth, where
the proxy in front passes the raw path on and the upstream may resolve it
another way (or not at all: Werkzeug routes ``/admin/%2e%2e/x`` to its
``/admin/`` handler).  Browsers resolve dot segments before they send, so only
crafted requests carry them.  In proxy mode the gateway itself sends the path it
judged, so resolving them there is unambiguous.

:func:`encode_path` turns a canonical path back into a wire path; in proxy mode
the upstream should be sent ``encode_path(normalise_path(raw))`` so it acts on
exactly the path that was judged.
"""

from __future__ import annotations

import functools
import re
import unicodedata
from urllib.parse import quote, unquote_to_bytes

from gateway.core.errors import AmbiguousPath

__all__ = ["encode_path", "normalise_path", "split_query"]

_BAD_ESCAPE = re.compile(r"%(?![0-9A-Fa-f]{2})")
_ENCODED_SEPARATOR = re.compile(r"%(?:2[Ff]|5[Cc])")
_RAW_ALLOWED = re.compile(r"[!-~]*")  # printable ASCII, no space
_RAW_FORBIDDEN = frozenset("\\?#")
_DECODED_FORBIDDEN = frozenset("\\%;?#")
_REFUSED_CATEGORIES = frozenset({"Cc", "Cf", "Zl", "Zp", "Cs"})
_ABSOLUTE_FORM = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^/?#]*")
# Characters left alone by encode_path besides letters, digits and "_.-~".
_PCHAR_SAFE = "/:@!$&'()*+,="


# canonical and wire forms of recently seen short paths are remembered (a
# dashboard asks for the same few paths over and over): LRU caches of bounded
# size, and longer paths are not worth a slot, as in PolicySet's route cache
_CACHE_ENTRIES = 4096
_CACHE_PATH_LENGTH = 256


def normalise_path(raw: str, *, refuse_dot_segments: bool = False) -> str:
    """Return the canonical decoded form of the raw request path ``raw``.

    Raises :class:`AmbiguousPath` (with a message fit for logs, not for clients)
    for anything that is not unambiguous; see the module docstring.  Refusals
    are never cached (an LRU cache keeps no exceptions): every one is computed
    (and so reported) again.
    """
    if refuse_dot_segments:
        if len(raw) > _CACHE_PATH_LENGTH:
            return _normalise(raw, refuse_dot_segments=True)
        return _normalised_strictly(raw)
    if len(raw) > _CACHE_PATH_LENGTH:
        return _normalise(raw)
    return _normalised(raw)


def _normalise(raw: str, *, refuse_dot_segments: bool = False) -> str:
    if not raw.startswith("/"):
        raise AmbiguousPath("path must start with '/'")
    if not _RAW_ALLOWED.fullmatch(raw):
        raise AmbiguousPath("path contains raw control, space or non-ASCII characters")
    for char in _RAW_FORBIDDEN:
        if char in raw:
            raise AmbiguousPath(f"path contains a raw {char!r}")
    if _BAD_ESCAPE.search(raw):
        raise AmbiguousPath("path contains a malformed percent escape")
    if _ENCODED_SEPARATOR.search(raw):
        raise AmbiguousPath("path contains an encoded slash or backslash (%2F, %5C)")
    try:
        decoded = unquote_to_bytes(raw).decode("utf-8", errors="strict")
    except UnicodeDecodeError as exc:
        raise AmbiguousPath("path is not valid UTF-8 after percent-decoding") from exc
    _check_decoded(decoded)
    return _resolve(decoded, refuse_dot_segments)


def _check_decoded(decoded: str) -> None:
    for char in _DECODED_FORBIDDEN:
        if char in decoded:
            what = {
                "%": "a '%' after decoding (double encoding)",
                ";": "a ';' path parameter",
                "?": "an encoded '?' (%3F): a server that decodes first ends the path there",
                "#": "an encoded '#' (%23): a server that decodes first ends the path there",
            }
            raise AmbiguousPath(f"path contains {what.get(char, repr(char))}")
    if decoded.isascii():
        for char in decoded:
            if char < " " or char == "\x7f":
                raise AmbiguousPath("path contains a control character")
        return
    for char in decoded:
        if unicodedata.category(char) in _REFUSED_CATEGORIES or char < " ":
            raise AmbiguousPath(f"path contains control or format character U+{ord(char):04X}")
        if not char.isascii():
            # any compatibility character: a server that applies NFKC reads another
            # path (a fullwidth a, U+FF41, turns /%EF%BD%81dmin into /admin)
            folded = unicodedata.normalize("NFKC", char)
            if folded != char:
                raise AmbiguousPath(
                    f"path contains U+{ord(char):04X}, which some servers read as {folded!r}"
                )


def _resolve(decoded: str, refuse_dot_segments: bool) -> str:
    """Collapse empty segments and resolve (or refuse) dot segments of a decoded path."""
    parts = decoded.split("/")[1:]
    out: list[str] = []
    trailing = False
    for part in parts:
        trailing = False
        if part == "":
            trailing = True
            continue
        if refuse_dot_segments and part in (".", ".."):
            raise AmbiguousPath(
                f"path has a {part!r} segment, which the upstream may resolve otherwise"
            )
        if part == ".":
            trailing = True
            continue
        if part == "..":
            if not out:
                raise AmbiguousPath("path climbs above the root with '..'")
            out.pop()
            trailing = True
            continue
        if part.endswith((".", " ")):
            raise AmbiguousPath(f"path segment {part!r} ends in a dot or space")
        out.append(part)
    if not out:
        return "/"
    return "/" + "/".join(out) + ("/" if trailing else "")


def encode_path(path: str) -> str:
    """Percent-encode a canonical path for the wire (inverse of :func:`normalise_path`)."""
    if len(path) > _CACHE_PATH_LENGTH:
        return _encode(path)
    return _encoded(path)


def _encode(path: str) -> str:
    return quote(path, safe=_PCHAR_SAFE)


_normalised = functools.lru_cache(maxsize=_CACHE_ENTRIES)(_normalise)
_normalised_strictly = functools.lru_cache(maxsize=_CACHE_ENTRIES)(
    functools.partial(_normalise, refuse_dot_segments=True)
)
_encoded = functools.lru_cache(maxsize=_CACHE_ENTRIES)(_encode)


def split_query(raw_uri: str) -> tuple[str, str]:
    """Split a raw request target into ``(path, query)``.

    Accepts origin-form (``/a/b?x=1``) and absolute-form (``https://h/a?x=1``, as
    in ingress-nginx's ``X-Original-URL``).  The path is returned still encoded;
    a ``#`` is left in place so :func:`normalise_path` refuses it.
    """
    absolute = _ABSOLUTE_FORM.match(raw_uri)
    if absolute:
        raw_uri = raw_uri[absolute.end() :]
        if not raw_uri.startswith("/"):
            raw_uri = "/" + raw_uri
    path, _, query = raw_uri.partition("?")
    return path, query
