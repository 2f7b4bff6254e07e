"""What lets a websocket act: the live validity of the login session it was opened with.

A socket is opened with a session cookie and keeps that session's key. Django checks a session
again on every HTTP request (django.contrib.auth.get_user); a socket lives for hours, so the
consumer asks `session_ending` the same questions before every client frame and every
CHAT_SESSION_CHECK_INTERVAL seconds (chat/consumers.py). Channel-layer events from chat/signals.py
only make it prompt; the check is what holds whatever ended the session: logout, a password change,
`clearsessions`, `flush`, a deleted row, expiry, a deactivated or deleted user, from this process,
another one or a shell.

A session whose key is renewed (update_session_auth_hash after a password change in the same
browser) ends its sockets too: the browser has the new cookie and reconnects with it (static/chat/socket.js).
"""

from importlib import import_module

from django.conf import settings
from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY, get_user_model, load_backend
from django.core.exceptions import ValidationError
from django.utils.crypto import constant_time_compare


def session_ending(session_key, user_id):
    """Why the session `session_key` no longer lets user `user_id` act (a code of
    protocol.SESSION_ENDINGS), or None while it does. Reads only: unlike Django's get_user, it
    never flushes or renews the session, which belongs to the browser."""
    store = import_module(settings.SESSION_ENGINE).SessionStore(session_key)
    # Loading answers nothing for a key that was deleted, flushed, renewed or has expired.
    session_user, backend_path = store.get(SESSION_KEY), store.get(BACKEND_SESSION_KEY)
    if session_user is None or backend_path not in settings.AUTHENTICATION_BACKENDS:
        return "session_expired"
    user_model = get_user_model()
    try:
        if user_model._meta.pk.to_python(session_user) != user_id:
            return "session_expired"
    except ValidationError:
        return "session_expired"
    user = load_backend(backend_path).get_user(user_id)
    if user is None:  # the backend refuses users who may not log in (ModelBackend: inactive ones)
        return "account_disabled" if user_model._default_manager.filter(pk=user_id).exists() else "account_deleted"
    if hasattr(user, "get_session_auth_hash"):
        session_hash = store.get(HASH_SESSION_KEY) or ""
        # Hashes made with a SECRET_KEY_FALLBACKS key still count, as Django's get_user has it.
        valid = [user.get_session_auth_hash(), *user.get_session_auth_fallback_hash()]
        if not session_hash or not any(constant_time_compare(session_hash, candidate) for candidate in valid):
            return "password_changed"
    return None
