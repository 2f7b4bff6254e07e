"""The client's errors: what a refused frame is answered with, and the one mapping from the
model layer's exceptions to the `error` frame's codes (docs/protocol.md, "Errors")."""

import functools

from channels.db import DatabaseSyncToAsync, database_sync_to_async

from chat.content import ModelCannotRead
from chat.models import (
    Attachment,
    CannotContinue,
    Conversation,
    ConversationBusy,
    Message,
    SendRefused,
    WrongMessage,
)


class ClientError(Exception):
    """A bad or refused frame; answered with one `error` frame, the socket stays open."""

    def __init__(self, code, message):
        super().__init__(message)
        self.code = code
        self.message = message


NOT_FOUND = "No such conversation."
NO_SUCH_MESSAGE = "No such message."
# Another user's upload, or one already sent with another message, is answered like an unknown one.
NO_SUCH_UPLOAD = "No such upload to attach: upload the file again."
BUSY = "An answer is still being written in this conversation: wait for it or press Stop."
INTERNAL_ERROR = "Something went wrong on the server; nothing was done. Try again."

# Exception -> (code, sentence); None takes the exception's own. Another user's conversation or
# message is answered exactly like one that does not exist.
DOMAIN_ERRORS = {
    Conversation.DoesNotExist: ("not_found", NOT_FOUND),
    Message.DoesNotExist: ("not_found", NO_SUCH_MESSAGE),
    Attachment.DoesNotExist: ("not_found", NO_SUCH_UPLOAD),
    ConversationBusy: ("busy", BUSY),
    WrongMessage: ("invalid_field", None),
    ModelCannotRead: ("unsupported_attachment", None),
    SendRefused: (None, None),  # its subclasses carry a code: rate_limited, quota_exceeded
    CannotContinue: (None, None),  # its code: not_finished, not_continuable
}


def client_error(error):
    """The ClientError that answers a domain exception, or None for any other."""
    for kind, (code, sentence) in DOMAIN_ERRORS.items():
        if isinstance(error, kind):
            return ClientError(code or error.code, sentence or str(error))
    return None


def _answering(function):
    @functools.wraps(function)
    def call(*args, **kwargs):
        try:
            return function(*args, **kwargs)
        except tuple(DOMAIN_ERRORS) as error:
            raise client_error(error) from None

    return call


def answered(function):
    """`function`, a synchronous call of the model layer, run in the ORM's thread for the event
    loop, its domain exceptions raised as the ClientError that answers them."""
    return database_sync_to_async(_answering(function))


def answered_on(executor, function):
    """`answered`, on the threads of `executor` (the runtime's database pool) instead of the
    ORM's one thread, with channels' connection clean-up before and after each call."""
    return DatabaseSyncToAsync(_answering(function), thread_sensitive=False, executor=executor)
