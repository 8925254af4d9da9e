"""How a request path is read, and which origins a deployment answers to: one home for both.

**Routed paths.** A path is percent-decoded once, segment by segment: ``/groups/a%2Fb`` names
the group ``a/b`` and ``/groups/a%2541`` the group ``a%41``. Decoding the whole path first (as
ASGI servers fill ``scope["path"]``) would make the first one two segments and leave nothing
to tell ``a%41`` from ``aA`` afterwards. The *routed path* keeps each decoded segment whole by
spelling its own ``%`` and ``/`` as ``%25`` and ``%2F`` (nothing else is escaped): the gateway
routes on it (:func:`hubbub_gateway.endpoints.send_shortcut`), path parameters are read back
from it with :func:`segment_value`, and a service token's audience is compared with it
(:mod:`hubbub.tokens`). A path without ``%`` is its own routed path.

**Public origins** (``HUBBUB_PUBLIC_URLS``): the scheme, host and port a deployment is reached
by, which a token's audience must name; the ``Host`` header a request arrives with is not
trusted for this (the caller, or the load balancer, chooses it).
"""

from __future__ import annotations

from collections.abc import Iterable
from urllib.parse import SplitResult, unquote, urlsplit

_DEFAULT_PORTS = {"http": 80, "https": 443}


def escape_segment(value: str) -> str:
    """A decoded segment as the routed path spells it: its ``%`` and ``/`` escaped."""
    if "%" in value:
        value = value.replace("%", "%25")
    if "/" in value:
        value = value.replace("/", "%2F")
    return value


def segment_value(segment: str) -> str:
    """The name a segment of a routed path stands for (undoes :func:`escape_segment`)."""
    return unquote(segment) if "%" in segment else segment


def routed_path(raw: str) -> str:
    """``raw`` (a path as sent, percent-encoded) decoded once per segment, each segment kept
    whole (see the module's docstring). Invalid UTF-8 decodes as U+FFFD, as ASGI servers do."""
    if "%" not in raw:
        return raw
    return "/".join(escape_segment(unquote(segment)) for segment in raw.split("/"))


def is_url_text(url: str) -> bool:
    """Whether ``url`` is printable ASCII without spaces, as a URL is sent. ``urlsplit``
    silently drops tabs and newlines and strips leading spaces, so a token's audience that
    holds any is refused rather than read as a different URL."""
    return url.isascii() and all("!" <= c <= "~" for c in url)


def _origin(parts: SplitResult) -> tuple[str, str, int | None] | None:
    """Scheme, lower-case host and explicit port (``None`` if absent) of an http(s) URL."""
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS or not parts.hostname:
        return None
    try:
        port = parts.port
    except ValueError:
        return None
    return scheme, parts.hostname, port


def public_origin(url: str) -> tuple[str, str, int]:
    """A ``HUBBUB_PUBLIC_URLS`` entry as (scheme, host, port); ``ValueError`` if it is not a
    base URL (http or https, a host, no path beyond ``/``, no query, user or fragment)."""
    parts = urlsplit(url)
    origin = _origin(parts) if is_url_text(url) else None
    if (
        origin is None
        or parts.path not in ("", "/")
        or parts.query
        or parts.fragment
        or parts.username is not None
    ):
        raise ValueError(f"{url!r} is not a base URL like https://hubbub.example.com")
    scheme, host, port = origin
    return scheme, host, _DEFAULT_PORTS[scheme] if port is None else port


class PublicOrigins:
    """The origins of ``HUBBUB_PUBLIC_URLS``; none configured admits every origin.

    An audience without a port names its scheme's host on any port, since the Azure SDKs
    drop it (``AudienceBaseUrl`` is ``scheme://host/``); one with a port must name that port
    (the default port of the scheme may be written or left out).
    """

    def __init__(self, urls: Iterable[str] = ()) -> None:
        self.urls = tuple(url.rstrip("/") for url in urls)
        self._origins = frozenset(public_origin(url) for url in self.urls)
        self._hosts = frozenset((scheme, host) for scheme, host, _ in self._origins)

    def __bool__(self) -> bool:
        return bool(self._origins)

    def admits(self, parts: SplitResult) -> bool:
        """Whether the URL ``parts`` (an audience, split) names one of the public origins."""
        origin = _origin(parts)
        if origin is None:
            return False
        if not self._origins:
            return True
        scheme, host, port = origin
        if port is None:
            return (scheme, host) in self._hosts
        return (scheme, host, port) in self._origins
