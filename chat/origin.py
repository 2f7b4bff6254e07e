"""The websocket handshake's Origin check: the socket must come from a page of this very site.

A browser sends the session cookie with any socket to this host, whichever page opens it, and
websockets are not bound by the same-origin policy: the Origin header is what tells this site's
pages from another site's (cross-site websocket hijacking). The rule is the one Django's CSRF check
applies to a POST's Origin, with the full origin compared, scheme and port included:

- this site's own origin: the scheme the page was served over (ws -> http, wss -> https, or what
  SECURE_PROXY_SSL_HEADER says behind a TLS proxy) and the Host header, which must itself be one of
  ALLOWED_HOSTS (a foreign Host is refused whatever the Origin: DNS rebinding);
- or one of CSRF_TRUSTED_ORIGINS (DJANGO_CSRF_TRUSTED_ORIGINS), exactly or by its `*.` subdomain
  pattern, for a site whose browsers see another address than the Host the processes get.

A missing Origin is refused: every browser sends one with a websocket handshake.
"""

import io
import logging
from urllib.parse import urlsplit

from channels.security.websocket import WebsocketDenier
from django.conf import settings
from django.core.exceptions import DisallowedHost
from django.core.handlers.asgi import ASGIRequest
from django.utils.http import is_same_domain

logger = logging.getLogger(__name__)


def handshake_request(scope):
    """The handshake as a Django request, so that the host and the scheme are read exactly as for
    the site's pages (ALLOWED_HOSTS, USE_X_FORWARDED_HOST, SECURE_PROXY_SSL_HEADER)."""
    scheme = scope.get("scheme")
    if scheme is None:
        # daphne names no scheme for websockets, even over its own TLS. With SECURE_SSL_REDIRECT
        # no page of the site is served over plain HTTP, so no page could open a plain socket.
        scheme = "https" if settings.SECURE_SSL_REDIRECT else "http"
    page_scheme = {"ws": "http", "wss": "https"}.get(scheme, scheme)
    return ASGIRequest({**scope, "method": "GET", "scheme": page_scheme}, io.BytesIO())


def origin_allowed(scope):
    request = handshake_request(scope)
    origin = request.META.get("HTTP_ORIGIN")
    if not origin:
        return False
    try:
        own_origin = f"{request.scheme}://{request.get_host()}"
    except DisallowedHost:
        return False
    if origin == own_origin:
        return True
    trusted = settings.CSRF_TRUSTED_ORIGINS
    if origin in [entry for entry in trusted if "*" not in entry]:
        return True
    try:
        parsed = urlsplit(origin)
    except ValueError:
        return False
    # `https://*.example.com`: that scheme, and example.com or any of its subdomains.
    patterns = [urlsplit(entry) for entry in trusted if "*" in entry]
    return any(
        is_same_domain(parsed.netloc, pattern.netloc.lstrip("*"))
        for pattern in patterns
        if pattern.scheme == parsed.scheme
    )


class SameOriginValidator:
    """ASGI middleware: hands a websocket handshake on only if its Origin is allowed."""

    def __init__(self, application):
        self.application = application

    async def __call__(self, scope, receive, send):
        if scope["type"] == "websocket" and not origin_allowed(scope):
            logger.warning(
                "Refused a websocket from origin %r for host %r",
                dict(scope.get("headers", [])).get(b"origin", b"").decode("latin1")[:200],
                dict(scope.get("headers", [])).get(b"host", b"").decode("latin1")[:200],
            )
            return await WebsocketDenier()(scope, receive, send)
        return await self.application(scope, receive, send)
