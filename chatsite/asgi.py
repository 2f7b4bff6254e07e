"""ASGI entry point: HTTP goes to Django (but /local/v1/...), /ws/chat/ to the chat consumer.

Websockets are accepted only from pages of this site (chat.origin: the full origin, scheme and
port included, against cross-site websocket hijacking) and carry the Django session
(AuthMiddlewareStack), which the consumer keeps checking for as long as the socket lives.
"""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "chatsite.settings")
django_asgi_app = get_asgi_application()

from channels.auth import AuthMiddlewareStack  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402

from chat import runtime  # noqa: E402
from chat.consumers import FrameSend  # noqa: E402
from chat.localmodel import endpoint as local_model_endpoint  # noqa: E402
from chat.origin import SameOriginValidator  # noqa: E402
from chat.routing import websocket_urlpatterns  # noqa: E402


async def http_application(scope, receive, send):
    """Django, but for the local model's endpoint: an ASGI app of its own, so that requests waiting
    for the model cost no thread, and every path under it answers in the API's JSON
    (chat/localmodel/endpoint.py)."""
    if local_model_endpoint.serves(scope["path"]):
        return await local_model_endpoint.application(scope, receive, send, runtime.current().local_model)
    return await django_asgi_app(scope, receive, send)


application = ProtocolTypeRouter(
    {
        "http": http_application,
        "websocket": SameOriginValidator(FrameSend(AuthMiddlewareStack(URLRouter(websocket_urlpatterns)))),
    }
)
# The process's runtime (chat/runtime.py), built here at server start: under daphne its worker
# starts once the reactor runs, and a SIGTERM saves the answers in flight before the server stops.
runtime.serve_with_daphne()
