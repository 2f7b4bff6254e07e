"""A session's end ends its sockets, however it ends and whatever frame they send (chat/authority.py).

Sessions are real: Django's test client logs in through the login form, changes the password at
/accounts/password_change/ and logs out; sockets ride on its cookie through the real ASGI
application. "Elsewhere" means a change no event of this process announces (a queryset update, a
row deleted in the database, a management command, another process): the socket finds out by
checking its session itself, before every frame and every CHAT_SESSION_CHECK_INTERVAL seconds.
"""

import datetime
import os
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest
import time_machine
from channels.db import database_sync_to_async
from django.conf import settings as django_settings
from django.contrib.auth import get_user_model
from django.contrib.auth.hashers import make_password
from django.contrib.sessions.models import Session
from django.core.management import call_command
from django.db import connection
from django.test import AsyncClient, Client
from django.urls import reverse
from django.utils import timezone

from chat import protocol
from chat.models import Conversation, Message
from tests.factories import conversation_with_answer
from tests.upstream import Pause, answer
from tests.websocket import assert_no_groups_left, connect, cookie_of, receive, receive_close, receive_until

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.asyncio]

PASSWORD = "correct horse battery"
NEW_PASSWORD = "an entirely new phrase"
ROOT = Path(__file__).resolve().parent.parent
User = get_user_model()


# --- Browsers and their sessions ------------------------------------------------------------


async def log_in(username="alice", password=PASSWORD):
    """A browser that logged in through the login form."""
    web = AsyncClient()
    response = await web.post(reverse("login"), {"username": username, "password": password})
    assert response.status_code == 302, "login failed"
    return web


async def change_password(web, old=PASSWORD, new=NEW_PASSWORD):
    response = await web.post(
        reverse("password_change"), {"old_password": old, "new_password1": new, "new_password2": new}
    )
    assert response.status_code == 302, "password change failed"


def session_key_of(web):
    return web.cookies[django_settings.SESSION_COOKIE_NAME].value


async def open_socket(web):
    communicator, connected, _ = await connect(cookie=cookie_of(web))
    assert connected
    return communicator


async def refused(cookie):
    communicator, connected, _ = await connect(cookie=cookie)
    await communicator.disconnect()
    return not connected


async def works(communicator):
    await communicator.send_json_to({"type": "chat.unknown"})
    return (await receive(communicator))["code"] == "unknown_type"


async def ended(communicator, *codes):
    """The server tells the socket its session ended (one of `codes`) and closes it with 4401;
    returns the code it gave."""
    close_code, frames = await receive_close(communicator, timeout=10)
    assert close_code == protocol.CLOSE_SESSION_ENDED
    last = frames[-1]
    assert last["type"] == "error" and last["code"] in codes, frames
    assert last["message"] == protocol.SESSION_ENDINGS[last["code"]]
    await communicator.disconnect()
    return last["code"]


# --- Logout and password changes, prompt through the channel layer ----------------------------


async def test_a_password_change_ends_the_sockets_of_every_session_of_the_user(alice, bob, worker):
    here, elsewhere = await log_in(), await log_in()
    before_here, before_elsewhere = cookie_of(here), cookie_of(elsewhere)
    socket_here, socket_elsewhere = await open_socket(here), await open_socket(elsewhere)
    bobs = await open_socket(await log_in("bob"))

    await change_password(here)

    assert await ended(socket_elsewhere, "password_changed") == "password_changed"
    # The session that changed the password goes on under a new key; its old socket ends and the
    # browser reconnects with the new cookie.
    await ended(socket_here, "password_changed", "session_expired")
    assert cookie_of(here) != before_here
    renewed = await open_socket(here)
    assert await works(renewed)
    assert await refused(before_here)
    assert await refused(before_elsewhere)
    assert await works(bobs)
    await renewed.disconnect()
    await bobs.disconnect()
    assert_no_groups_left()


async def test_after_a_password_change_logging_out_ends_the_sockets_of_the_renewed_session(alice, worker):
    web = await log_in()
    opened_before = await open_socket(web)
    await change_password(web)
    await ended(opened_before, "password_changed", "session_expired")
    opened_after = await open_socket(web)
    another_after = await open_socket(web)
    renewed_cookie = cookie_of(web)

    await web.post(reverse("logout"))

    assert await ended(opened_after, "logged_out") == "logged_out"
    assert await ended(another_after, "logged_out") == "logged_out"
    assert await refused(renewed_cookie)
    assert_no_groups_left()


async def test_logging_out_ends_that_sessions_sockets_only(alice, worker):
    leaving, staying = await log_in(), await log_in()
    leaving_sockets = [await open_socket(leaving), await open_socket(leaving)]
    staying_socket = await open_socket(staying)
    await leaving.post(reverse("logout"))
    for communicator in leaving_sockets:
        assert await ended(communicator, "logged_out") == "logged_out"
    assert await works(staying_socket)
    await staying_socket.disconnect()
    assert_no_groups_left()


async def test_a_password_set_by_staff_or_a_shell_ends_every_session(alice, worker):
    web = await log_in()
    communicator = await open_socket(web)

    def set_password():
        user = User.objects.get(username="alice")
        user.set_password(NEW_PASSWORD)
        user.save()

    await database_sync_to_async(set_password)()
    assert await ended(communicator, "password_changed") == "password_changed"
    assert await refused(cookie_of(web))


class FormFields(HTMLParser):
    """The fields of a page's forms as a browser would submit them unchanged."""

    def __init__(self):
        super().__init__()
        self.fields = {}
        self.select = None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        name = attrs.get("name")
        if tag == "input" and name:
            if attrs.get("type") in ("checkbox", "radio"):
                if "checked" in attrs:
                    self.fields.setdefault(name, []).append(attrs.get("value", "on"))
            elif attrs.get("type") not in ("submit", "button"):
                self.fields.setdefault(name, []).append(attrs.get("value", ""))
        elif tag == "select" and name:
            self.select = name
            self.fields.setdefault(name, [])
        elif tag == "option" and self.select and "selected" in attrs:
            self.fields[self.select].append(attrs.get("value", ""))
        elif tag == "textarea" and name:
            self.fields.setdefault(name, []).append("")

    def handle_endtag(self, tag):
        if tag == "select":
            self.select = None


async def test_deactivating_a_user_in_the_admin_ends_their_sockets_at_once(alice, worker, settings):
    """The admin saves inside a transaction: the sockets are told once it commits, and re-check."""
    settings.CHAT_SESSION_CHECK_INTERVAL = 3600  # only the event can be what ends them
    web = await log_in()
    communicator = await open_socket(web)

    def deactivate_in_the_admin():
        User.objects.create_superuser("root", "root@example.com", PASSWORD)
        staff = Client()
        staff.force_login(User.objects.get(username="root"))
        url = reverse("admin:auth_user_change", args=[alice.pk])
        form = FormFields()
        form.feed(staff.get(url).content.decode())
        fields = {name: values for name, values in form.fields.items() if name != "is_active"}
        response = staff.post(url, fields)
        assert response.status_code == 302, response.content.decode()[:2000]

    await database_sync_to_async(deactivate_in_the_admin)()
    assert not (await User.objects.aget(pk=alice.pk)).is_active
    assert await ended(communicator, "account_disabled") == "account_disabled"
    assert await refused(cookie_of(web))


async def test_deleting_a_user_ends_their_sockets_at_once(alice, worker, settings):
    settings.CHAT_SESSION_CHECK_INTERVAL = 3600
    web = await log_in()
    communicator = await open_socket(web)
    await database_sync_to_async(conversation_with_answer)(alice)
    await database_sync_to_async(User.objects.filter(pk=alice.pk).delete)()
    assert await ended(communicator, "account_deleted") == "account_deleted"


async def test_a_login_stamp_alone_does_not_disturb_the_sockets(alice, worker, settings):
    """Every login saves last_login; that changes nothing a session depends on."""
    web = await log_in()
    communicator = await open_socket(web)
    await log_in()  # another browser: alice's row is saved with last_login
    assert await works(communicator)
    await communicator.disconnect()


# --- Ends that no event announces: every frame type is refused ------------------------------


def delete_user_without_signals(user):
    Conversation.objects.filter(owner=user).delete()
    with connection.cursor() as cursor:
        cursor.execute(f"DELETE FROM {User._meta.db_table} WHERE id = %s", [user.pk])


def expire(session_key):
    Session.objects.filter(session_key=session_key).update(expire_date=timezone.now() - datetime.timedelta(seconds=1))


ENDINGS_ELSEWHERE = {
    "session row deleted": (
        lambda user, key: Session.objects.filter(session_key=key).delete(),
        "session_expired",
    ),
    "session expired": (lambda user, key: expire(key), "session_expired"),
    "expired and cleared": (lambda user, key: (expire(key), call_command("clearsessions")), "session_expired"),
    "database flushed": (lambda user, key: call_command("flush", interactive=False, verbosity=0), "session_expired"),
    "password changed elsewhere": (
        lambda user, key: User.objects.filter(pk=user.pk).update(password=make_password(NEW_PASSWORD)),
        "password_changed",
    ),
    "deactivated elsewhere": (
        lambda user, key: User.objects.filter(pk=user.pk).update(is_active=False),
        "account_disabled",
    ),
    "user deleted elsewhere": (lambda user, key: delete_user_without_signals(user), "account_deleted"),
}


def frames_for(conversation, question, reply):
    return {
        "chat.subscribe": {"type": "chat.subscribe", "conversation": str(conversation.id)},
        "chat.send": {"type": "chat.send", "conversation": str(conversation.id), "text": "more", "client_id": "s"},
        "chat.send new": {"type": "chat.send", "conversation": None, "text": "hello", "client_id": "n"},
        "chat.stop": {"type": "chat.stop", "message": str(reply.id)},
        "chat.select": {"type": "chat.select", "message": str(question.id)},
        "chat.edit": {"type": "chat.edit", "message": str(question.id), "text": "edited", "client_id": "e"},
        "chat.regenerate": {"type": "chat.regenerate", "message": str(reply.id), "client_id": "r"},
        "chat.continue": {"type": "chat.continue", "message": str(reply.id), "client_id": "c"},
        "chat.regenerate with a model": {
            "type": "chat.regenerate",
            "message": str(reply.id),
            "model": "test-model",
            "client_id": "m",
        },
        "chat.send without text": {"type": "chat.send", "conversation": str(conversation.id), "client_id": "t"},
        "unknown type": {"type": "chat.unknown"},
        "malformed": "not json at all",
    }


def state_of_the_database():
    return (
        sorted(Message.objects.values_list("id", "status", "text")),
        sorted(Conversation.objects.values_list("id", "current_id")),
    )


FRAME_NAMES = [
    "chat.subscribe",
    "chat.send",
    "chat.send new",
    "chat.stop",
    "chat.select",
    "chat.edit",
    "chat.regenerate",
    "chat.continue",
    "chat.regenerate with a model",
    "chat.send without text",
    "unknown type",
    "malformed",
]


@pytest.mark.parametrize("frame_name", FRAME_NAMES)
@pytest.mark.parametrize("ending", list(ENDINGS_ELSEWHERE))
async def test_every_frame_after_the_session_ended_elsewhere_is_refused_and_closes(
    alice, upstream, worker, ending, frame_name
):
    change, code = ENDINGS_ELSEWHERE[ending]
    conversation = await database_sync_to_async(conversation_with_answer)(alice, status=Message.Status.STREAMING)
    question = await Message.objects.aget(conversation=conversation, role="user")
    reply = await Message.objects.aget(conversation=conversation, role="assistant")
    web = await log_in()
    communicator = await open_socket(web)
    assert await works(communicator)

    await database_sync_to_async(change)(alice, session_key_of(web))
    before = await database_sync_to_async(state_of_the_database)()
    frame = frames_for(conversation, question, reply)[frame_name]
    if isinstance(frame, str):
        await communicator.send_to(text_data=frame)
    else:
        await communicator.send_json_to(frame)

    assert await ended(communicator, code) == code
    assert await database_sync_to_async(state_of_the_database)() == before
    assert upstream.requests == []
    assert_no_groups_left()


# --- A socket that only listens ends too ------------------------------------------------------


@pytest.mark.parametrize("ending", list(ENDINGS_ELSEWHERE))
async def test_a_listening_socket_ends_when_its_session_ends_elsewhere(alice, worker, settings, ending):
    settings.CHAT_SESSION_CHECK_INTERVAL = 0.2
    change, code = ENDINGS_ELSEWHERE[ending]
    web = await log_in()
    communicator = await open_socket(web)
    await database_sync_to_async(change)(alice, session_key_of(web))
    assert await ended(communicator, code) == code
    assert_no_groups_left()


async def test_a_listening_socket_ends_when_its_session_times_out(alice, worker, settings):
    settings.CHAT_SESSION_CHECK_INTERVAL = 0.2
    web = await log_in()
    communicator = await open_socket(web)
    later = timezone.now() + datetime.timedelta(seconds=django_settings.SESSION_COOKIE_AGE + 60)
    with time_machine.travel(later, tick=True):
        assert await ended(communicator, "session_expired") == "session_expired"


async def test_an_ended_socket_stops_receiving_the_answer_it_followed(alice, upstream, worker, settings):
    settings.CHAT_SESSION_CHECK_INTERVAL = 0.2
    upstream.queue(answer(["first "])[:5] + [Pause(0.5)] + answer(["first ", "second"])[5:])
    ending, staying = await log_in(), await log_in()
    sender = await open_socket(staying)
    await sender.send_json_to({"type": "chat.send", "conversation": None, "text": "go", "client_id": "c"})
    conversation_id = (await receive(sender))["conversation"]["id"]
    follower = await open_socket(ending)
    await follower.send_json_to({"type": "chat.subscribe", "conversation": conversation_id})
    await receive_until(follower, "conversation.subscribed")

    await database_sync_to_async(Session.objects.filter(session_key=session_key_of(ending)).delete)()
    await ended(follower, "session_expired")
    done = (await receive_until(sender, "message.done"))[-1]
    assert done["status"] == "completed"
    # Everything for the followers was handed out before the sender's message.done arrived.
    assert await follower.receive_nothing(timeout=0.1)
    await sender.disconnect()
    assert_no_groups_left()


# --- Another process --------------------------------------------------------------------------


def database_url():
    """The test database as a DATABASE_URL for another process."""
    database = connection.settings_dict
    if connection.vendor == "sqlite":
        return f"sqlite:///{database['NAME']}"
    return (
        f"postgres://{database['USER']}:{database['PASSWORD']}@{database['HOST']}:{database['PORT']}/{database['NAME']}"
    )


def in_another_process(code):
    env = {**os.environ, "DATABASE_URL": database_url(), "DJANGO_SETTINGS_MODULE": "chatsite.settings"}
    if django_settings.REDIS_URL:
        env["REDIS_URL"] = django_settings.REDIS_URL
    command = [sys.executable, "manage.py", "shell", "-c", code]
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr


OTHER_PROCESS = {
    # what the other process runs, the code, whether it announces it (a user's save does)
    "deactivated": (
        "from django.contrib.auth.models import User; u = User.objects.get(username='alice');"
        " u.is_active = False; u.save()",
        "account_disabled",
        True,
    ),
    "password changed": (
        "from django.contrib.auth.models import User; u = User.objects.get(username='alice');"
        f" u.set_password({NEW_PASSWORD!r}); u.save()",
        "password_changed",
        True,
    ),
    "sessions deleted": (
        "from django.contrib.sessions.models import Session; Session.objects.all().delete()",
        "session_expired",
        False,
    ),
}


@pytest.mark.parametrize("change", list(OTHER_PROCESS))
async def test_a_change_made_by_another_process_ends_the_socket(alice, worker, settings, change):
    """Without Redis no event crosses processes: the periodic check ends the socket. With Redis,
    a change the other process announces ends it through the channel layer, long before the
    check (an hour away) could."""
    code, expected, announced = OTHER_PROCESS[change]
    settings.CHAT_SESSION_CHECK_INTERVAL = 3600 if settings.REDIS_URL and announced else 0.3
    web = await log_in()
    communicator = await open_socket(web)
    await database_sync_to_async(in_another_process)(code)
    assert await ended(communicator, expected) == expected
    assert await refused(cookie_of(web))
