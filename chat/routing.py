"""The websocket routes. The last one takes every other path and refuses it at the handshake.

Without it the router raises for a path it does not know (`No route found`), which daphne answers
with HTTP 500 and a traceback in the log: a probe, a scanner or an API client trying websocket mode
on /local/v1/responses (which the local endpoint does not offer, docs/openresponses.md) would look
like a crash of the site. Closing before accepting is answered 403 by daphne, with nothing logged
but the access line.
"""

from channels.security.websocket import WebsocketDenier
from django.urls import path, re_path

from chat.consumers import ChatConsumer

websocket_urlpatterns = [
    path("ws/chat/", ChatConsumer.as_asgi()),
    re_path(r"", WebsocketDenier.as_asgi()),
]
