"""The settings page and instructions before the first message, through Django's test client and
a real websocket: defaults for new chats, the theme kept with the account, today's usage."""

import datetime
import uuid

import pytest
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from chat import providers
from chat.models import (
    EMPTY_CONVERSATIONS_LIMIT,
    INSTRUCTIONS_LENGTH,
    AccountLimits,
    AccountSettings,
    Conversation,
    UsageEntry,
)
from tests.factories import conversation_with_answer
from tests.upstream import answer
from tests.websocket import assert_no_groups_left, connect, receive_until

pytestmark = pytest.mark.django_db


@pytest.fixture
def alice_client(client, alice):
    client.force_login(alice)
    return client


def settings_form(**fields):
    return {"default_model": providers.default_model(), "default_instructions": "", "theme": "", **fields}


def test_the_settings_page_needs_a_login(client):
    for name in ("settings", "settings-theme"):
        response = client.get(reverse(name))
        assert response.status_code == 302
        assert response["Location"].startswith(reverse("login"))
    assert client.post(reverse("chat:start"), {"instructions": "x"}).status_code == 302


def test_the_settings_page_saves_defaults_for_new_chats_and_the_theme(alice_client, alice, bob):
    model = providers.model_names()[-1]
    response = alice_client.post(
        reverse("settings"),
        settings_form(default_model=model, default_instructions="  Answer briefly.\n", theme="dark"),
        follow=True,
    )
    assert response.status_code == 200
    assert "Settings saved." in response.content.decode()
    saved = AccountSettings.objects.get(user=alice)
    assert (saved.default_model, saved.default_instructions, saved.theme) == (model, "Answer briefly.", "dark")
    # Kept with the account: every page of it opens in that theme, before any script runs.
    assert b'data-theme="dark"' in alice_client.get(reverse("chat:home")).content
    assert not AccountSettings.objects.filter(user=bob).exists()
    page = alice_client.get(reverse("chat:home")).context["page_data"]
    assert (page["default_model"], page["default_instructions"]) == (model, "Answer briefly.")


@pytest.mark.parametrize(
    "fields, field",
    [
        ({"default_model": "not-offered"}, "default_model"),
        ({"default_instructions": "x" * (INSTRUCTIONS_LENGTH + 1)}, "default_instructions"),
        ({"theme": "sepia"}, "theme"),
    ],
)
def test_the_settings_page_refuses_what_it_cannot_keep(alice_client, alice, fields, field):
    response = alice_client.post(reverse("settings"), settings_form(**fields))
    assert response.status_code == 200
    assert field in response.context["form"].errors
    assert not AccountSettings.objects.filter(user=alice).exists()


def test_a_default_model_no_longer_offered_reads_as_the_sites(alice):
    AccountSettings.objects.create(user=alice, default_model="retired-model")
    assert AccountSettings.of(alice).model_for_new_chats == providers.default_model()


def test_the_settings_page_shows_todays_usage_against_the_budget(alice_client, alice, bob):
    AccountLimits.objects.create(user=alice, daily_token_budget=5000)
    today = timezone.localdate()
    for user, day, tokens in ((alice, today, 1200), (alice, today - datetime.timedelta(days=1), 99), (bob, today, 7)):
        UsageEntry.objects.create(
            user=user,
            username=user.username,
            message_id=uuid.uuid4(),
            model="test-model",
            day=day,
            total_tokens=tokens,
            recorded_at=timezone.now(),
        )
    content = alice_client.get(reverse("settings")).content.decode()
    assert "1200 of 5000 tokens used today" in content
    assert "<td>test-model</td><td>1</td><td>1200</td>" in content
    assert reverse("password_change") in content


def test_the_theme_button_keeps_the_choice_with_the_account(alice_client, alice):
    response = alice_client.post(reverse("settings-theme"), {"theme": "light"})
    assert response.json() == {"theme": "light"}
    assert AccountSettings.objects.get(user=alice).theme == "light"
    assert alice_client.post(reverse("settings-theme"), {"theme": "neon"}).status_code == 400
    assert alice_client.get(reverse("settings-theme")).status_code == 405
    # Without the CSRF token a forged request changes nothing.
    strict = Client(enforce_csrf_checks=True)
    strict.force_login(alice)
    assert strict.post(reverse("settings-theme"), {"theme": "dark"}).status_code == 403
    assert AccountSettings.objects.get(user=alice).theme == "light"


def test_a_visitors_pages_carry_no_account_theme(client):
    assert b"data-account-theme" not in client.get(reverse("login")).content


def test_a_new_chat_can_be_started_with_its_own_instructions(alice_client, alice):
    response = alice_client.post(
        reverse("chat:start"),
        {"instructions": " Answer like a pirate. ", "model": providers.default_model(), "first_message": "Hello there"},
    )
    assert response.status_code == 201
    frame = response.json()["conversation"]
    conversation = Conversation.objects.get(pk=frame["id"], owner=alice)
    assert (conversation.instructions, conversation.title) == ("Answer like a pirate.", "Hello there")
    assert not conversation.messages.exists()


@pytest.mark.parametrize(
    "fields", [{"instructions": "x" * (INSTRUCTIONS_LENGTH + 1)}, {"instructions": "x", "model": "not-offered"}]
)
def test_starting_a_chat_refuses_what_it_cannot_keep(alice_client, alice, fields):
    response = alice_client.post(reverse("chat:start"), fields)
    assert response.status_code == 400
    assert not Conversation.objects.filter(owner=alice).exists()
    assert alice_client.get(reverse("chat:start")).status_code == 405


def test_new_chats_with_nothing_sent_are_bounded_per_user(alice_client, alice, bob):
    """POST /c/new/ makes a row without a send, so the send rate does not bound it."""
    conversation_with_answer(alice)  # a chat with messages does not count
    for _ in range(EMPTY_CONVERSATIONS_LIMIT):
        assert alice_client.post(reverse("chat:start"), {"instructions": "Be brief."}).status_code == 201
    refused = alice_client.post(reverse("chat:start"), {"instructions": "Be brief."})
    assert refused.status_code == 400
    assert f"You have {EMPTY_CONVERSATIONS_LIMIT} new chats with nothing sent yet" in refused.json()["error"]["message"]
    assert Conversation.objects.filter(owner=alice).count() == EMPTY_CONVERSATIONS_LIMIT + 1
    bobs = Client()
    bobs.force_login(bob)
    assert bobs.post(reverse("chat:start"), {"instructions": "Be brief."}).status_code == 201


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_the_first_answer_of_a_chat_started_with_instructions_follows_them(alice, upstream, worker):
    conversation = await Conversation.objects.acreate(owner=alice, model=providers.default_model())
    await Conversation.objects.filter(pk=conversation.pk).aupdate(instructions="Answer like a pirate.")
    upstream.queue(answer(["Arr."]))
    communicator, connected, _ = await connect(alice)
    assert connected
    await communicator.send_json_to(
        {"type": "chat.send", "conversation": str(conversation.id), "text": "Hi", "client_id": "first"}
    )
    frames = await receive_until(communicator, "message.done")
    assert frames[-1]["status"] == "completed"
    assert upstream.requests[-1]["body"]["instructions"] == "Answer like a pirate."
    await conversation.arefresh_from_db()
    assert conversation.title == "Hi"  # the first message names a conversation started empty
    await communicator.disconnect()
    assert_no_groups_left()


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_a_new_chat_sent_over_the_socket_starts_with_the_default_instructions(alice, bob, upstream, worker):
    await AccountSettings.objects.acreate(user=alice, default_instructions="Always answer in French.")
    for user, expected in ((alice, "Always answer in French."), (bob, None)):
        upstream.queue(answer(["D'accord."]))
        communicator, connected, _ = await connect(user)
        assert connected
        await communicator.send_json_to({"type": "chat.send", "conversation": None, "text": "Hi", "client_id": "c"})
        frames = await receive_until(communicator, "message.done")
        assert frames[0]["conversation"]["instructions"] == (expected or "")
        assert upstream.requests[-1]["body"].get("instructions") == expected
        await communicator.disconnect()
    assert_no_groups_left()
