"""The chat page's JSON endpoints: rename, instructions, delete and search, each owner-only."""

import pytest
from django.test import Client
from django.urls import reverse

from chat.models import Conversation, Message
from tests.factories import conversation_with_answer

pytestmark = pytest.mark.django_db


@pytest.fixture
def alice_client(client, alice):
    client.force_login(alice)
    return client


def test_it_renames_a_conversation(alice_client, alice):
    conversation = conversation_with_answer(alice)
    response = alice_client.post(reverse("chat:rename", args=[conversation.id]), {"title": "  Rivers   and seas "})
    assert response.status_code == 200
    assert response.json()["conversation"]["title"] == "Rivers and seas"
    conversation.refresh_from_db()
    assert conversation.title == "Rivers and seas"


def test_it_refuses_a_blank_or_overlong_title(alice_client, alice):
    conversation = conversation_with_answer(alice, title="Kept")
    url = reverse("chat:rename", args=[conversation.id])
    assert alice_client.post(url, {"title": "   "}).status_code == 400
    assert alice_client.post(url, {"title": "x" * 121}).status_code == 400
    conversation.refresh_from_db()
    assert conversation.title == "Kept"


def test_state_changing_endpoints_refuse_get(alice_client, alice):
    conversation = conversation_with_answer(alice)
    for name in ("chat:rename", "chat:instructions", "chat:delete"):
        assert alice_client.get(reverse(name, args=[conversation.id])).status_code == 405
    assert Conversation.objects.filter(pk=conversation.pk).exists()


def test_state_changing_endpoints_need_the_csrf_token(alice):
    conversation = conversation_with_answer(alice, title="Kept")
    client = Client(enforce_csrf_checks=True)
    client.force_login(alice)
    response = client.post(reverse("chat:rename", args=[conversation.id]), {"title": "Forged"})
    assert response.status_code == 403
    client.get(reverse("chat:home"))  # the page sets the csrftoken cookie
    token = client.cookies["csrftoken"].value
    response = client.post(
        reverse("chat:rename", args=[conversation.id]), {"title": "Mine"}, headers={"X-CSRFToken": token}
    )
    assert response.status_code == 200
    conversation.refresh_from_db()
    assert conversation.title == "Mine"


def test_another_users_conversation_answers_like_an_unknown_one(alice_client, bob):
    theirs = conversation_with_answer(bob, title="Bob's secret")
    unknown = "00000000-0000-4000-8000-000000000000"
    for name, data in (("chat:rename", {"title": "Mine now"}), ("chat:instructions", {}), ("chat:delete", {})):
        foreign = alice_client.post(reverse(name, args=[theirs.id]), data)
        missing = alice_client.post(reverse(name, args=[unknown]), data)
        assert foreign.status_code == missing.status_code == 404
        assert foreign.content == missing.content.replace(unknown.encode(), str(theirs.id).encode())
    theirs.refresh_from_db()
    assert theirs.title == "Bob's secret"


def test_it_saves_instructions(alice_client, alice):
    conversation = conversation_with_answer(alice)
    url = reverse("chat:instructions", args=[conversation.id])
    response = alice_client.post(url, {"instructions": "Answer like a pirate.\n"})
    assert response.status_code == 200
    assert response.json()["conversation"]["instructions"] == "Answer like a pirate."
    conversation.refresh_from_db()
    assert conversation.instructions == "Answer like a pirate."
    assert alice_client.post(url, {"instructions": "x" * 8001}).status_code == 400


def test_it_deletes_a_conversation_with_its_messages(alice_client, alice):
    conversation = conversation_with_answer(alice)
    response = alice_client.post(reverse("chat:delete", args=[conversation.id]))
    assert response.status_code == 200
    assert response.json()["next"] == reverse("chat:home")
    assert not Conversation.objects.filter(pk=conversation.pk).exists()
    assert not Message.objects.filter(conversation_id=conversation.pk).exists()


def test_it_refuses_to_delete_while_an_answer_is_written(alice_client, alice):
    conversation = conversation_with_answer(alice, status=Message.Status.STREAMING)
    response = alice_client.post(reverse("chat:delete", args=[conversation.id]))
    assert response.status_code == 409
    assert response.json()["error"]["code"] == "busy"
    assert Conversation.objects.filter(pk=conversation.pk).exists()


def test_search_matches_titles_and_message_text_of_ones_own_conversations(alice_client, alice, bob):
    by_title = conversation_with_answer(alice, "Tell me about otters", "They swim.", title="Otters")
    by_answer = conversation_with_answer(alice, "Which animals hold hands?", "Sea OTTERS do, while asleep.")
    conversation_with_answer(alice, "What is a river?", "Flowing water.")
    conversation_with_answer(bob, "Otters again", "Bob's otters.")

    response = alice_client.get(reverse("chat:search"), {"q": "otter"})
    assert response.status_code == 200
    found = response.json()["conversations"]
    assert {item["id"] for item in found} == {str(by_title.id), str(by_answer.id)}
    assert {item["url"] for item in found} == {f"/c/{by_title.id}/", f"/c/{by_answer.id}/"}


def test_search_results_show_where_the_words_matched(alice_client, alice, bob):
    """Rough edge 8: a snippet around the first match in the messages, the match as written."""
    long_answer = (
        "Rivers flow downhill. " * 5 + "Sea OTTERS hold\nhands while asleep, " + "so they drift apart less. " * 5
    )
    by_answer = conversation_with_answer(alice, "Which animals hold hands?", long_answer)
    by_title = conversation_with_answer(alice, "Tell me", "They swim.", title="Otters")
    conversation_with_answer(bob, "Otters again", "Bob's otters hold hands too.")

    found = {
        item["id"]: item for item in alice_client.get(reverse("chat:search"), {"q": "otters"}).json()["conversations"]
    }
    assert set(found) == {str(by_answer.id), str(by_title.id)}
    snippet = found[str(by_answer.id)]["snippet"]
    assert snippet["match"] == "OTTERS"
    assert snippet["before"].startswith("…") and snippet["before"].endswith("downhill. Sea ")
    assert snippet["after"].startswith(" hold hands while asleep")  # the line break reads as a space
    assert snippet["after"].endswith("…")
    assert found[str(by_title.id)]["snippet"] is None  # its title is what matched, and it is shown
    assert alice_client.get(reverse("chat:search"), {"q": ""}).json()["conversations"][0]["snippet"] is None


def test_a_blank_search_lists_every_own_conversation(alice_client, alice, bob):
    conversation_with_answer(alice, "One")
    conversation_with_answer(alice, "Two")
    conversation_with_answer(bob, "Three")
    response = alice_client.get(reverse("chat:search"), {"q": "  "})
    assert sorted(item["title"] for item in response.json()["conversations"]) == ["One", "Two"]


def test_the_endpoints_need_a_login(client, alice):
    conversation = conversation_with_answer(alice)
    assert client.get(reverse("chat:search"), {"q": "river"}).status_code == 302
    assert client.post(reverse("chat:delete", args=[conversation.id])).status_code == 302
    assert Conversation.objects.filter(pk=conversation.pk).exists()


def test_the_favicon_address_leads_to_the_icon(client):
    response = client.get("/favicon.ico")
    assert response.status_code == 301
    assert response["Location"].endswith("chat/favicon.svg")


def test_the_budget_endpoint_answers_todays_figures_of_ones_own_account(alice_client, alice, bob, settings):
    settings.CHAT_DAILY_TOKEN_BUDGET = 100
    conversation_with_answer(alice, tokens=(30, 10))
    conversation_with_answer(bob, tokens=(50, 50))
    budget = alice_client.get(reverse("chat:budget")).json()["budget"]
    assert (budget["used"], budget["budget"], budget["exhausted"]) == (40, 100, False)
    assert alice_client.post(reverse("chat:budget")).status_code == 405
    alice_client.logout()
    assert alice_client.get(reverse("chat:budget")).status_code == 302
