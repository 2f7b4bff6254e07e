import asyncio

import pytest
import time_machine
from channels.db import database_sync_to_async
from django.core import mail
from django.urls import reverse

from chat.models import AccountLimits, Message
from tests.factories import conversation_with_answer
from tests.upstream import Pause, answer
from tests.websocket import assert_no_groups_left, connect, receive, receive_until

PASSWORD = "correct horse battery"


@pytest.mark.django_db
def test_login_is_throttled_after_repeated_failures(client, alice, settings):
    settings.LOGIN_FAILURE_LIMIT = 3
    url = reverse("login")
    for _ in range(3):
        response = client.post(url, {"username": "alice", "password": "wrong"})
        assert "Please enter a correct username and password" in response.content.decode()
    response = client.post(url, {"username": "alice", "password": PASSWORD})
    assert "Too many failed attempts for this account. Try again in 15 minutes." in response.content.decode()
    assert "_auth_user_id" not in client.session


@pytest.mark.django_db
def test_a_good_login_clears_earlier_failures(client, alice, settings):
    settings.LOGIN_FAILURE_LIMIT = 3
    url = reverse("login")
    for _ in range(2):
        client.post(url, {"username": "alice", "password": "wrong"})
    assert client.post(url, {"username": "alice", "password": PASSWORD}).status_code == 302
    client.post(reverse("logout"))
    for _ in range(2):
        client.post(url, {"username": "alice", "password": "wrong"})
    assert client.post(url, {"username": "alice", "password": PASSWORD}).status_code == 302


@pytest.mark.django_db
def test_signup_is_closed_by_default(client):
    assert client.get(reverse("signup")).status_code == 404
    assert client.post(reverse("signup"), {"username": "eve"}).status_code == 404


@pytest.mark.django_db
def test_signup_when_open_validates_passwords_and_logs_in(client, settings):
    settings.CHAT_SIGNUP_OPEN = True
    weak = client.post(reverse("signup"), {"username": "eve", "password1": "123", "password2": "123"})
    assert "This password is too short" in weak.content.decode()
    good = client.post(
        reverse("signup"),
        {"username": "eve", "password1": "a long unusual phrase", "password2": "a long unusual phrase"},
    )
    assert good.status_code == 302
    assert client.get(reverse("chat:home")).status_code == 200


@pytest.mark.django_db
def test_password_change_and_reset(client, alice):
    client.force_login(alice)
    response = client.post(
        reverse("password_change"),
        {"old_password": PASSWORD, "new_password1": "another fine phrase", "new_password2": "another fine phrase"},
    )
    assert response.status_code == 302
    alice.refresh_from_db()
    assert alice.check_password("another fine phrase")
    client.post(reverse("logout"))
    client.post(reverse("password_reset"), {"email": "alice@example.com"})
    assert len(mail.outbox) == 1
    link = next(line for line in mail.outbox[0].body.splitlines() if "/accounts/reset/" in line).strip()
    form_page = client.get(link, follow=True)
    assert form_page.context["validlink"]
    done = client.post(
        form_page.redirect_chain[-1][0], {"new_password1": "third phrase here", "new_password2": "third phrase here"}
    )
    assert done.status_code == 302
    alice.refresh_from_db()
    assert alice.check_password("third phrase here")


@pytest.mark.django_db
def test_pages_need_a_login(client):
    response = client.get(reverse("chat:home"))
    assert response.status_code == 302 and response["Location"].startswith(reverse("login"))


# --- Limits on sending ---------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
@pytest.mark.asyncio
async def test_a_spent_daily_budget_refuses_sends_until_midnight(alice, upstream, worker, settings):
    settings.TIME_ZONE = "UTC"
    with time_machine.travel("2026-06-01 23:50Z", tick=True):
        await database_sync_to_async(AccountLimits.objects.create)(user=alice, daily_token_budget=15)
        await database_sync_to_async(conversation_with_answer)(alice, tokens=(10, 5))
        communicator, _, _ = await connect(alice)
        await communicator.send_json_to({"type": "chat.send", "conversation": None, "text": "one more"})
        refusal = await receive(communicator)
        assert refusal["code"] == "quota_exceeded"
        assert "15 tokens" in refusal["message"]
        await communicator.disconnect()
        assert upstream.requests == []
    with time_machine.travel("2026-06-02 00:00:01Z", tick=True):
        communicator, _, _ = await connect(alice)
        await communicator.send_json_to({"type": "chat.send", "conversation": None, "text": "a new day"})
        frames = await receive_until(communicator, "message.done")
        assert frames[-1]["status"] == "completed"
        await communicator.disconnect()
    assert len(upstream.requests) == 1


@pytest.mark.django_db(transaction=True)
@pytest.mark.asyncio
async def test_the_send_rate_is_limited_per_user(alice, bob, upstream, worker, settings):
    settings.CHAT_SENDS_PER_MINUTE = 2
    communicator, _, _ = await connect(alice)
    for number in range(2):
        await communicator.send_json_to({"type": "chat.send", "conversation": None, "text": f"q{number}"})
        await receive_until(communicator, "message.done")
    await communicator.send_json_to({"type": "chat.send", "conversation": None, "text": "too many"})
    refusal = await receive(communicator)
    assert refusal["code"] == "rate_limited"
    await communicator.disconnect()
    # Another user is not affected.
    other, _, _ = await connect(bob)
    await other.send_json_to({"type": "chat.send", "conversation": None, "text": "hello"})
    assert (await receive_until(other, "message.done"))[-1]["status"] == "completed"
    await other.disconnect()


# --- Sessions ending close sockets -----------------------------------------------------------


@pytest.mark.django_db(transaction=True)
@pytest.mark.asyncio
async def test_logging_out_closes_the_sessions_sockets(alice, worker):
    from django.test import AsyncClient

    web = AsyncClient()
    await database_sync_to_async(web.force_login)(alice)
    cookie = f"sessionid={web.cookies['sessionid'].value}".encode()
    from channels.testing import WebsocketCommunicator

    from chatsite.asgi import application
    from tests.websocket import HOST, ORIGIN

    communicator = WebsocketCommunicator(application, "/ws/chat/", headers=[ORIGIN, HOST, (b"cookie", cookie)])
    assert (await communicator.connect())[0]
    await web.post(reverse("logout"))
    frame = await receive(communicator)
    assert frame["code"] == "logged_out"
    assert (await communicator.receive_output(timeout=2))["type"] == "websocket.close"
    # The same cookie no longer opens a socket.
    again = WebsocketCommunicator(application, "/ws/chat/", headers=[ORIGIN, HOST, (b"cookie", cookie)])
    assert not (await again.connect())[0]
    await communicator.disconnect()
    assert_no_groups_left()


@pytest.mark.django_db(transaction=True)
@pytest.mark.asyncio
async def test_deactivating_a_user_closes_their_sockets_and_stops_their_answers(alice, upstream, worker):
    upstream.queue(answer(["partial "])[:5] + [Pause(30)])
    communicator, _, _ = await connect(alice)
    await communicator.send_json_to({"type": "chat.send", "conversation": None, "text": "long one"})
    await receive_until(communicator, "message.delta")
    alice.is_active = False
    await database_sync_to_async(alice.save)()
    frames = await receive_until(communicator, "error")
    assert frames[-1]["code"] == "account_disabled"
    # The stop is a request: the answer's own thread saves it, a moment after the save returned.
    for _ in range(250):
        answer_row = await Message.objects.aget(role="assistant")
        if answer_row.is_finished:
            break
        await asyncio.sleep(0.02)
    assert answer_row.status == Message.Status.CANCELLED
    assert answer_row.text == "partial "
    await communicator.disconnect()
    assert_no_groups_left()


@pytest.mark.django_db
def test_the_page_shows_todays_usage_against_the_budget(client, alice, settings):
    settings.CHAT_DAILY_TOKEN_BUDGET = 1000
    conversation_with_answer(alice, tokens=(100, 23))
    client.force_login(alice)
    page = client.get(reverse("chat:home")).content.decode()
    assert "Today: 123 of 1000 tokens used." in page
    settings.CHAT_DAILY_TOKEN_BUDGET = 0
    assert "Today:" not in client.get(reverse("chat:home")).content.decode()


@pytest.mark.django_db
def test_the_login_page_offers_password_reset_and_sign_up_when_open(client, settings):
    assert "Forgot your password?" in client.get(reverse("login")).content.decode()
    assert "Create an account" not in client.get(reverse("login")).content.decode()
    settings.CHAT_SIGNUP_OPEN = True
    assert "Create an account" in client.get(reverse("login")).content.decode()
