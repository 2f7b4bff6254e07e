"""The one mapping from the model layer's exceptions to the client's error codes (`chat.errors`)."""

import asyncio

import pytest

from chat.errors import BUSY, NO_SUCH_MESSAGE, NOT_FOUND, ClientError, answered, client_error
from chat.models import (
    BudgetSpent,
    CannotContinue,
    Conversation,
    ConversationBusy,
    Message,
    SendRateExceeded,
    WrongMessage,
)


@pytest.mark.parametrize(
    ("error", "code", "sentence"),
    [
        (Conversation.DoesNotExist(), "not_found", NOT_FOUND),
        (Message.DoesNotExist(), "not_found", NO_SUCH_MESSAGE),
        (ConversationBusy(), "busy", BUSY),
        (WrongMessage("Only answers can be regenerated."), "invalid_field", "Only answers can be regenerated."),
        (SendRateExceeded(1), "rate_limited", "You are sending messages too fast: wait 1 second."),
        (BudgetSpent(100, 100), "quota_exceeded", "You have used today's budget of 100 tokens; it resets at midnight."),
        (CannotContinue("not_finished", "Still being written."), "not_finished", "Still being written."),
    ],
)
def test_each_domain_exception_is_answered_with_its_code_and_sentence(error, code, sentence):
    answer = client_error(error)
    assert (answer.code, answer.message) == (code, sentence)


def test_other_exceptions_are_no_client_error():
    """A bug is logged and answered as internal_error by the consumer, never passed for a refusal."""
    assert client_error(ValueError("a bug")) is None
    assert client_error(KeyError("a bug")) is None


def run(function, *args):
    return asyncio.run(answered(function)(*args))


# answered() runs on Channels' database thread, which closes that thread's stale connections
# first (close_old_connections): database access, with connections kept open between calls.
@pytest.mark.django_db
def test_answered_runs_the_call_and_raises_domain_exceptions_as_client_errors():
    assert run(lambda a, b: a + b, 2, 3) == 5

    def busy():
        raise ConversationBusy

    with pytest.raises(ClientError) as caught:
        run(busy)
    assert caught.value.code == "busy"
    assert caught.value.__suppress_context__, "the domain exception stays out of the client's error"

    def bug():
        raise RuntimeError("a bug")

    with pytest.raises(RuntimeError):
        run(bug)
