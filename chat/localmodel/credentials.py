"""The local endpoint's bearer token: derived from SECRET_KEY, the same in every process.

Its own small module, so that the provider of the local model (chat/providers.py) and the endpoint
that checks the token (chat/localmodel/endpoint.py) both read it from below.
"""

import hmac

from django.conf import settings


def local_token():
    return hmac.new(settings.SECRET_KEY.encode(), b"chat.localmodel.token", "sha256").hexdigest()
