"""Who may look and who may act: the access token, cross-site checks, the bind rule.

The page is a view of the store plus the calls that change runs (DESIGN.md
§8), so every request needs the access token: in the URL once (``?token=``,
then kept in a cookie, as Jupyter does), or as ``Authorization: Bearer``. A
request that changes a run must also come from this page: its ``Origin`` (and
``Sec-Fetch-Site``, where the browser sends it) must be this server's, and it
must carry the CSRF token the page was rendered with (derived from the access
token, never the token itself). Anything else is refused before it reaches
the store. The cookie is ``SameSite=Strict`` and ``HttpOnly``.

A server bound to anything but loopback refuses to start without a token
given explicitly (`check_bind`); on loopback one is generated when none is.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import secrets
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final

from durable_agent.errors import ConfigurationError

if TYPE_CHECKING:
    from starlette.requests import Request

__all__ = ["Access", "check_bind", "is_loopback"]

CSRF_FIELD: Final = "csrf"
CSRF_HEADER: Final = "x-csrf-token"


def is_loopback(host: str) -> bool:
    """Whether binding ``host`` only accepts connections from this machine."""
    if host.strip("[]").lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything


def check_bind(host: str, token: str | None) -> None:
    """Refuse a non-loopback bind without an explicit token (`ConfigurationError`)."""
    if token is None and not is_loopback(host):
        raise ConfigurationError(
            f"the inspector binds {host!r}, which other machines can reach: give it an access "
            "token with --token TOKEN (or $DURABLE_AGENT_UI_TOKEN), e.g. one made by: "
            "python -c 'import secrets; print(secrets.token_urlsafe(24))'"
        )


@dataclass(frozen=True)
class Access:
    """The access token of one inspector, and the checks every request passes."""

    token: str = field(default_factory=lambda: secrets.token_urlsafe(24), repr=False)
    name: str | None = None
    """The token's name: recorded as who decided when no ``user`` label is given."""

    @property
    def cookie(self) -> str:
        """The cookie name, distinct per token (cookies are shared by every port of a host)."""
        return "durable_agent_" + hashlib.sha256(self.token.encode()).hexdigest()[:10]

    @property
    def csrf(self) -> str:
        """The token forms carry: derived from the access token, which it never reveals."""
        return hmac.new(self.token.encode(), b"durable-agent csrf", hashlib.sha256).hexdigest()

    def given(self, request: Request) -> bool:
        """Whether ``request`` carries the access token (cookie, bearer header or query)."""
        offered = [
            request.cookies.get(self.cookie, ""),
            request.query_params.get("token", ""),
        ]
        auth = request.headers.get("authorization", "")
        if auth.lower().startswith("bearer "):
            offered.append(auth[7:].strip())
        return any(o and hmac.compare_digest(o, self.token) for o in offered)

    def cross_site(self, request: Request, form_csrf: str | None) -> str | None:
        """Why a request that changes a run is refused, or None when it may go on."""
        if not self.given(request):
            return "the access token is missing or wrong"
        origin = request.headers.get("origin")
        own = f"{request.url.scheme}://{request.headers.get('host', '')}"
        if origin is not None and origin != own:
            return f"the request comes from another origin ({origin})"
        site = request.headers.get("sec-fetch-site")
        if site is not None and site not in ("same-origin", "none"):
            return f"the request comes from another site (Sec-Fetch-Site: {site})"
        offered = request.headers.get(CSRF_HEADER) or form_csrf or ""
        if not hmac.compare_digest(offered, self.csrf):
            return "the CSRF token is missing or wrong: reload the page"
        return None
