"""Pinning and archiving conversations: the endpoints, the sidebar's order, and every tab of the
owner told at once over the channel layer."""

import pytest
from asgiref.sync import sync_to_async
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from chat.models import Conversation
from tests.factories import conversation_with_answer
from tests.websocket import assert_no_groups_left, connect, receive_until


@pytest.fixture
def alice_client(client, alice):
    client.force_login(alice)
    return client


def sidebar_titles(client):
    page = client.get(reverse("chat:home"))
    return [c.title for c in page.context["conversations"]], [c.title for c in page.context["archived"]]


@pytest.mark.django_db
def test_a_pinned_conversation_leads_the_sidebar_and_an_archived_one_leaves_it(alice_client, alice):
    for title in ("Oldest", "Middle", "Newest"):
        made = conversation_with_answer(alice, title, "Yes.", title=title)
        Conversation.objects.filter(pk=made.pk).update(updated_at=timezone.now())
    assert sidebar_titles(alice_client) == (["Newest", "Middle", "Oldest"], [])

    oldest = Conversation.objects.get(title="Oldest")
    response = alice_client.post(reverse("chat:pin", args=[oldest.id]), {"pinned": "true"})
    assert response.status_code == 200
    assert response.json()["conversation"] | {"updated_at": None, "pinned_at": None} == {
        "id": str(oldest.id),
        "title": "Oldest",
        "url": f"/c/{oldest.id}/",
        "pinned": True,
        "archived": False,
        "updated_at": None,
        "pinned_at": None,
    }
    oldest.refresh_from_db()
    assert response.json()["conversation"]["pinned_at"] == oldest.pinned_at.isoformat()
    assert sidebar_titles(alice_client) == (["Oldest", "Newest", "Middle"], [])
    alice_client.post(reverse("chat:pin", args=[Conversation.objects.get(title="Middle").id]))
    assert sidebar_titles(alice_client) == (["Middle", "Oldest", "Newest"], [])  # the last pinned first

    newest = Conversation.objects.get(title="Newest")
    assert alice_client.post(reverse("chat:archive", args=[newest.id]), {"archived": "1"}).json()["conversation"][
        "archived"
    ]
    assert sidebar_titles(alice_client) == (["Middle", "Oldest"], ["Newest"])
    # Archiving a pinned one unpins it; pinning an archived one brings it back.
    alice_client.post(reverse("chat:archive", args=[oldest.id]))
    assert sidebar_titles(alice_client) == (["Middle"], ["Oldest", "Newest"])
    alice_client.post(reverse("chat:pin", args=[oldest.id]))
    assert sidebar_titles(alice_client) == (["Oldest", "Middle"], ["Newest"])
    # Restored: back among the others by its last activity.
    alice_client.post(reverse("chat:archive", args=[newest.id]), {"archived": "false"})
    alice_client.post(reverse("chat:pin", args=[oldest.id]), {"pinned": "0"})
    assert sidebar_titles(alice_client) == (["Middle", "Newest", "Oldest"], [])


@pytest.mark.django_db
def test_archived_conversations_are_still_found_and_opened(alice_client, alice):
    archived = conversation_with_answer(alice, "Whales sing", "Yes.", title="Whales")
    archived.archive()
    found = alice_client.get(reverse("chat:search"), {"q": "sing"}).json()["conversations"]
    assert [(item["title"], item["archived"]) for item in found] == [("Whales", True)]
    page = alice_client.get(reverse("chat:conversation", args=[archived.id]))
    assert page.status_code == 200 and b"Whales sing" in page.content


@pytest.mark.django_db
def test_pinning_and_archiving_are_the_owners_only_with_a_post_a_value_and_the_csrf_token(alice_client, alice, bob):
    theirs = conversation_with_answer(bob, title="Bob's")
    unknown = "00000000-0000-4000-8000-000000000000"
    for name in ("chat:pin", "chat:archive"):
        foreign = alice_client.post(reverse(name, args=[theirs.id]))
        missing = alice_client.post(reverse(name, args=[unknown]))
        assert foreign.status_code == missing.status_code == 404
        assert foreign.content == missing.content.replace(unknown.encode(), str(theirs.id).encode())
    theirs.refresh_from_db()
    assert theirs.pinned_at is None and theirs.archived_at is None

    mine = conversation_with_answer(alice)
    for name, field in (("chat:pin", "pinned"), ("chat:archive", "archived")):
        assert alice_client.get(reverse(name, args=[mine.id])).status_code == 405
        bad = alice_client.post(reverse(name, args=[mine.id]), {field: "maybe"})
        assert bad.status_code == 400 and field in bad.json()["error"]["message"]
        strict = Client(enforce_csrf_checks=True)
        strict.force_login(alice)
        assert strict.post(reverse(name, args=[mine.id])).status_code == 403
    mine.refresh_from_db()
    assert mine.pinned_at is None and mine.archived_at is None
    assert Client().post(reverse("chat:pin", args=[mine.id])).status_code == 302


@pytest.mark.django_db(transaction=True)
@pytest.mark.asyncio
async def test_every_tab_of_the_owner_hears_of_a_pin_an_archive_and_a_restore_at_once(alice, bob):
    conversation = await sync_to_async(conversation_with_answer)(alice, title="Shared")
    first, connected, _ = await connect(alice)
    second, connected_too, _ = await connect(alice)
    others, bob_connected, _ = await connect(bob)
    assert connected and connected_too and bob_connected
    client = Client()
    await sync_to_async(client.force_login)(alice)

    async def post(name, data):
        response = await sync_to_async(client.post)(reverse(name, args=[conversation.id]), data)
        assert response.status_code == 200
        return response.json()

    for name, data, change in (
        ("chat:pin", {"pinned": "true"}, {"pinned": True, "archived": False}),
        ("chat:archive", {"archived": "true"}, {"pinned": False, "archived": True}),
        ("chat:archive", {"archived": "false"}, {"pinned": False, "archived": False}),
    ):
        await post(name, data)
        for socket in (first, second):
            frames = await receive_until(socket, "conversation.updated")
            row = frames[-1]["conversation"]
            assert row["id"] == str(conversation.id)
            assert {key: row[key] for key in change} == change
    # Another user's sockets hear nothing of it.
    assert await others.receive_nothing(timeout=0.5)
    for socket in (first, second, others):
        await socket.disconnect()
    assert_no_groups_left()


@pytest.mark.django_db(transaction=True)
@pytest.mark.asyncio
async def test_saves_that_change_nothing_in_the_sidebar_send_nothing(alice):
    conversation = await sync_to_async(conversation_with_answer)(alice, title="Quiet")
    socket, connected, _ = await connect(alice)
    assert connected
    conversation.updated_at = timezone.now()
    await sync_to_async(conversation.save)(update_fields=["updated_at"])
    await sync_to_async(conversation.set_instructions)("Be brief.")
    await sync_to_async(conversation.rename)("A title of its own")
    await sync_to_async(conversation.pin)()
    frames = await receive_until(socket, "conversation.updated")
    # The first frame the socket gets is the pin's: the touch, the instructions and the title sent none.
    assert [(frame["type"], frame["conversation"]["pinned"]) for frame in frames] == [("conversation.updated", True)]
    await socket.disconnect()
