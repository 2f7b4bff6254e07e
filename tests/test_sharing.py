"""Share links through real HTTP: made by the owner, opened by anyone, revoked, continued, audited.

Django's test client drives the site's own URLs and middleware (CSRF, CSP, sessions); the admin
is the real admin.
"""

import json
import re
import uuid

import pytest
from django.test import Client
from django.urls import reverse

from chat.models import (
    SHARE_LINKS_PER_CONVERSATION,
    AuditEvent,
    Conversation,
    Message,
    SharedConversation,
    UsageEntry,
)
from tests.factories import conversation_with_answer

pytestmark = pytest.mark.django_db

UNKNOWN = "00000000-0000-4000-8000-000000000000"
INSTRUCTIONS = "Never mention the word heron-secret-instructions."
OLD_ANSWER = "An earlier version that must stay private."


@pytest.fixture
def alice_client(client, alice):
    client.force_login(alice)
    return client


@pytest.fixture
def conversation(alice):
    """A question with two versions of its answer (the newer shown) and instructions."""
    conversation = conversation_with_answer(alice, "How do I reverse a list?", OLD_ANSWER, title="Reversing lists")
    conversation.set_instructions(INSTRUCTIONS)
    question = conversation.messages.get(role=Message.Role.USER)
    newer = conversation.messages.create(
        role=Message.Role.ASSISTANT,
        parent=question,
        model="test-model",
        text="Use **slicing**:\n\n```python\nitems[::-1]\n```",
    )
    conversation.move_to(newer)
    return conversation


def share(client, conversation):
    response = client.post(reverse("chat:share", args=[conversation.id]))
    assert response.status_code == 200, response.content
    return response.json()["url"]


def page_data(response):
    match = re.search(r'<script id="page-data" type="application/json">(.*?)</script>', response.content.decode(), re.S)
    return json.loads(match[1])


def path_of(url):
    return re.sub(r"^https?://[^/]+", "", url)


def test_the_owner_shares_a_link_that_opens_without_a_login(alice_client, conversation):
    url = share(alice_client, conversation)
    token = SharedConversation.objects.get().token
    assert url == f"http://testserver/s/{token}/"
    assert len(token) >= 43, "256 random bits"

    response = Client().get(path_of(url))
    assert response.status_code == 200
    page = response.content.decode()
    assert '<meta name="robots" content="noindex">' in page
    assert response["X-Robots-Tag"] == "noindex"
    assert "no-store" in response["Cache-Control"]
    assert "script-src 'self'" in response["Content-Security-Policy"]
    assert "unsafe-inline" not in response["Content-Security-Policy"]
    assert "chat/shared.js" in page
    messages = page_data(response)["messages"]
    assert [(message["role"], message["text"]) for message in messages] == [
        ("user", "How do I reverse a list?"),
        ("assistant", "Use **slicing**:\n\n```python\nitems[::-1]\n```"),
    ]
    assert "Log in" in page and "Continue this chat" not in page


def test_the_share_page_shows_only_the_current_path(alice_client, conversation, alice):
    """No instructions, no other versions, no composer or sidebar, no ids of the conversation."""
    conversation_with_answer(alice, "Another conversation of alice's", title="Sidebar title")
    response = Client().get(path_of(share(alice_client, conversation)))
    page = response.content.decode()
    assert "heron-secret-instructions" not in page
    assert OLD_ANSWER not in page
    for absent in ('id="message-input"', 'id="composer"', 'id="sidebar"', "Sidebar title", "Conversation settings"):
        assert absent not in page, absent
    assert str(conversation.id) not in page
    for message in conversation.messages.all():
        assert str(message.id) not in page
    for message in page_data(response)["messages"]:
        assert message["versions"] is None and message["parent"] is None
        assert "usage" not in message


def test_an_untitled_conversation_is_shared_without_naming_its_id(alice_client, alice):
    conversation = conversation_with_answer(alice, "Untitled question")
    Conversation.objects.filter(pk=conversation.pk).update(title="")
    page = Client().get(path_of(share(alice_client, Conversation.objects.get(pk=conversation.pk))))
    assert str(conversation.id) not in page.content.decode()
    assert "A shared conversation" in page.content.decode()


def test_the_snapshot_does_not_follow_later_changes(alice_client, conversation):
    url = path_of(share(alice_client, conversation))
    last = conversation.current
    question = conversation.messages.create(role=Message.Role.USER, parent=last, text="A later question")
    later = conversation.messages.create(
        role=Message.Role.ASSISTANT, parent=question, text="A later answer", model="test-model"
    )
    conversation.move_to(later)
    conversation.rename("A later title")
    Message.objects.filter(pk=last.pk).update(text="Edited afterwards")

    response = Client().get(url)
    page = response.content.decode()
    assert "A later" not in page and "Edited afterwards" not in page
    assert "Reversing lists" in page
    assert len(page_data(response)["messages"]) == 2
    # A new link is a new snapshot, with what is there now.
    newer = Client().get(path_of(share(alice_client, conversation)))
    assert [message["text"] for message in page_data(newer)["messages"]][-1] == "A later answer"


def test_another_users_or_an_unknown_conversation_is_a_404_like_the_page(client, bob, conversation):
    client.force_login(bob)
    for name, method, data in (
        ("chat:share", "post", {}),
        ("chat:share", "get", {}),
        ("chat:share_revoke", "post", {"all": "1"}),
    ):
        foreign = getattr(client, method)(reverse(name, args=[conversation.id]), data)
        missing = getattr(client, method)(reverse(name, args=[UNKNOWN]), data)
        assert foreign.status_code == missing.status_code == 404
        assert foreign.content == missing.content.replace(UNKNOWN.encode(), str(conversation.id).encode())
    assert client.get(reverse("chat:conversation", args=[conversation.id])).status_code == 404
    assert not SharedConversation.objects.exists()


def test_sharing_needs_a_login(client, conversation, alice):
    assert client.post(reverse("chat:share", args=[conversation.id])).status_code == 302
    assert client.get(reverse("chat:share", args=[conversation.id])).status_code == 302
    assert not SharedConversation.objects.exists()
    link = SharedConversation.objects.share(conversation)
    response = client.post(reverse("chat:shared_continue", args=[link.token]))
    assert response.status_code == 302 and response["Location"].startswith(reverse("login"))
    assert client.post(reverse("chat:share_revoke", args=[conversation.id]), {"all": "1"}).status_code == 302
    assert SharedConversation.objects.live().count() == 1
    assert Conversation.objects.count() == 1


def test_the_state_changing_share_endpoints_need_the_csrf_token(alice, bob, conversation):
    strict = Client(enforce_csrf_checks=True)
    strict.force_login(alice)
    assert strict.post(reverse("chat:share", args=[conversation.id])).status_code == 403
    assert not SharedConversation.objects.exists()
    strict.get(reverse("chat:home"))  # the page sets the csrftoken cookie
    token = {"X-CSRFToken": strict.cookies["csrftoken"].value}
    assert strict.post(reverse("chat:share", args=[conversation.id]), headers=token).status_code == 200
    link = SharedConversation.objects.get()
    revoke = reverse("chat:share_revoke", args=[conversation.id])
    assert strict.post(revoke, {"token": link.token}).status_code == 403
    assert SharedConversation.objects.live().count() == 1

    visitor = Client(enforce_csrf_checks=True)
    visitor.force_login(bob)
    assert visitor.post(reverse("chat:shared_continue", args=[link.token])).status_code == 403
    assert Conversation.objects.filter(owner=bob).count() == 0
    visitor.get(f"/s/{link.token}/")  # the share page sets the csrftoken cookie too
    visitor_token = {"X-CSRFToken": visitor.cookies["csrftoken"].value}
    assert visitor.post(reverse("chat:shared_continue", args=[link.token]), headers=visitor_token).status_code == 302
    assert strict.post(revoke, {"token": link.token}, headers=token).status_code == 200
    assert not SharedConversation.objects.live().exists()


def test_revoked_links_answer_404_like_unknown_ones(alice_client, conversation, alice):
    first = path_of(share(alice_client, conversation))
    second = path_of(share(alice_client, conversation))
    third = path_of(share(alice_client, conversation))
    listed = alice_client.get(reverse("chat:share", args=[conversation.id])).json()["links"]
    assert {path_of(link["url"]) for link in listed} == {first, second, third}
    revoke = reverse("chat:share_revoke", args=[conversation.id])

    first_token = first.split("/")[2]
    answer = alice_client.post(revoke, {"token": first_token})
    assert answer.status_code == 200
    assert answer.json()["revoked"] == 1
    assert {path_of(link["url"]) for link in answer.json()["links"]} == {second, third}
    revoked = Client().get(first)
    unknown = Client().get("/s/" + "A" * 43 + "/")
    assert revoked.status_code == unknown.status_code == 404
    assert revoked.content == unknown.content
    assert Client().get(second).status_code == 200
    # The frozen copy goes with the link.
    assert SharedConversation.objects.get(token=first_token).messages == []
    # A link already revoked, or another conversation's, is not this conversation's to revoke.
    assert alice_client.post(revoke, {"token": first_token}).status_code == 404
    other = conversation_with_answer(alice, "Another")
    other_link = SharedConversation.objects.share(other)
    assert alice_client.post(revoke, {"token": other_link.token}).status_code == 404
    assert Client().get(f"/s/{other_link.token}/").status_code == 200
    assert alice_client.post(revoke, {}).status_code == 400

    assert alice_client.post(revoke, {"all": "1"}).json() == {"revoked": 2, "links": []}
    assert Client().get(second).status_code == Client().get(third).status_code == 404
    assert alice_client.post(second + "continue/").status_code == 404
    assert Conversation.objects.filter(owner=alice).count() == 2


def test_a_malformed_or_unknown_token_is_a_404(client, alice_client, conversation):
    share(alice_client, conversation)
    token = SharedConversation.objects.get().token
    for path in (f"/s/{token[:-1]}/", f"/s/{token}x/", f"/s/x{token}/", "/s/" + "a" * 65 + "/", "/s/%00/", "/s/../"):
        assert client.get(path).status_code == 404, path
    assert client.get(f"/s/{token}/").status_code == 200


def test_deleting_the_conversation_revokes_its_links(alice_client, conversation):
    url = path_of(share(alice_client, conversation))
    assert alice_client.post(reverse("chat:delete", args=[conversation.id])).status_code == 200
    assert Client().get(url).status_code == 404
    assert not SharedConversation.objects.exists()


def test_with_sharing_switched_off_nothing_is_shared_or_opened(alice_client, conversation, settings):
    url = path_of(share(alice_client, conversation))
    page = alice_client.get(reverse("chat:conversation", args=[conversation.id])).content.decode()
    assert 'id="share-button"' in page and 'id="share-dialog"' in page

    settings.CHAT_SHARING = False
    assert Client().get(url).status_code == 404
    assert alice_client.get(url).status_code == 404
    assert alice_client.post(url + "continue/").status_code == 404
    assert alice_client.post(reverse("chat:share", args=[conversation.id])).status_code == 404
    assert alice_client.get(reverse("chat:share", args=[conversation.id])).status_code == 404
    assert alice_client.post(reverse("chat:share_revoke", args=[conversation.id]), {"all": "1"}).status_code == 404
    page = alice_client.get(reverse("chat:conversation", args=[conversation.id])).content.decode()
    assert "share-button" not in page and "share-dialog" not in page
    assert SharedConversation.objects.count() == 1
    assert Conversation.objects.count() == 1


def test_a_conversation_being_answered_is_shared_once_the_answer_ends(alice_client, alice):
    conversation = conversation_with_answer(alice, status=Message.Status.STREAMING)
    response = alice_client.post(reverse("chat:share", args=[conversation.id]))
    assert response.status_code == 409
    assert response.json()["error"]["code"] == "busy"
    assert not SharedConversation.objects.exists()


def test_the_number_of_live_links_is_bounded(alice_client, conversation):
    for _ in range(SHARE_LINKS_PER_CONVERSATION):
        share(alice_client, conversation)
    assert alice_client.post(reverse("chat:share", args=[conversation.id])).status_code == 400
    alice_client.post(reverse("chat:share_revoke", args=[conversation.id]), {"all": "1"})
    share(alice_client, conversation)


def test_continue_this_chat_copies_the_snapshot_into_the_visitors_own_conversation(
    client, alice_client, conversation, bob
):
    url = path_of(share(alice_client, conversation))
    spent_before = UsageEntry.objects.count()
    client.force_login(bob)
    page = client.get(url).content.decode()
    assert "Continue this chat" in page
    response = client.post(url + "continue/")
    assert response.status_code == 302
    copy = Conversation.objects.get(owner=bob)
    assert response["Location"] == reverse("chat:conversation", args=[copy.id])
    assert copy.title == "Reversing lists"
    assert copy.owner == bob
    assert copy.instructions == ""
    assert [(message.role, message.text) for message in copy.path()] == [
        ("user", "How do I reverse a list?"),
        ("assistant", "Use **slicing**:\n\n```python\nitems[::-1]\n```"),
    ]
    assert copy.messages.count() == 2, "the other version stays alice's"
    assert UsageEntry.objects.count() == spent_before, "a copy is not usage"
    assert all(message.total_tokens is None for message in copy.messages.all())
    mine = client.get(response["Location"])
    assert mine.status_code == 200
    assert [message["text"] for message in page_data(mine)["messages"]][0] == "How do I reverse a list?"
    # The original is untouched and still alice's alone.
    assert conversation.messages.count() == 3
    assert client.get(reverse("chat:conversation", args=[conversation.id])).status_code == 404


# --- The admin ----------------------------------------------------------------------------------


@pytest.fixture
def link(conversation):
    return SharedConversation.objects.share(conversation)


def test_staff_read_shared_links_in_the_admin_audited(client, reviewer, link):
    client.force_login(reviewer)
    listing = client.get(reverse("admin:chat_sharedconversation_changelist"))
    assert listing.status_code == 200
    event = AuditEvent.objects.get()
    assert (event.action, event.shown) == ("listed", [str(link.conversation_id)])

    page = client.get(reverse("admin:chat_sharedconversation_change", args=[link.pk]))
    assert page.status_code == 200
    assert "items[::-1]" in page.content.decode()
    viewed = AuditEvent.objects.filter(action="viewed").get()
    assert (viewed.conversation, viewed.staff) == (link.conversation, reviewer)
    assert viewed.detail == f"shared link {link.token_start}"
    for response in (listing, page):
        assert link.token not in response.content.decode(), "the whole token opens the page unaudited"

    found = client.get(reverse("admin:chat_sharedconversation_changelist"), {"q": link.token})
    assert found.context["cl"].result_count == 1
    assert AuditEvent.objects.filter(action="searched").get().shown == [str(link.conversation_id)]


@pytest.mark.parametrize(
    "params",
    [
        {"token__startswith": "a"},
        {"token": "x"},
        {"messages__icontains": "slicing"},
        {"messages__0__text__startswith": "H"},
        {"title__startswith": "R"},
        {"conversation__shared_links__token__startswith": "a"},
        {"_popup": "1"},
    ],
    ids=str,
)
def test_the_admin_refuses_probing_shared_links(client, reviewer, superuser, link, params):
    for user in (reviewer, superuser):
        client.force_login(user)
        response = client.get(reverse("admin:chat_sharedconversation_changelist"), params)
        assert response.status_code in (400, 403)
        assert link.token not in response.content.decode()
    response = client.get(reverse("admin:chat_conversation_changelist"), {"shared_links__token__startswith": "a"})
    assert response.status_code == 400
    assert not AuditEvent.objects.exists()


def test_shared_links_are_hidden_with_the_transcripts(client, superuser, link, settings):
    settings.CHAT_STAFF_CAN_READ_TRANSCRIPTS = False
    client.force_login(superuser)
    assert client.get(reverse("admin:chat_sharedconversation_changelist")).status_code == 403
    assert client.get(reverse("admin:chat_sharedconversation_change", args=[link.pk])).status_code == 403
    assert "items[::-1]" not in client.get(reverse("admin:index")).content.decode()
    assert not AuditEvent.objects.exists()


def test_staff_without_transcript_access_see_no_shared_links(client, charlie, link):
    client.force_login(charlie)
    assert client.get(reverse("admin:chat_sharedconversation_changelist")).status_code == 403


def test_a_superuser_revokes_a_reported_link(client, superuser, reviewer, link):
    changelist = reverse("admin:chat_sharedconversation_changelist")
    data = {"action": "revoke_selected", "_selected_action": [str(link.pk)]}
    client.force_login(reviewer)
    client.post(changelist, data)
    assert SharedConversation.objects.live().count() == 1
    client.force_login(superuser)
    client.post(changelist, data)
    assert not SharedConversation.objects.live().exists()
    assert Client().get(f"/s/{link.token}/").status_code == 404


def test_a_superuser_deletes_a_shared_conversation_and_its_owner_in_the_admin(client, superuser, link, bob):
    """The links go with them: the admin's deletion is not blocked by them, nor audited less."""
    other = SharedConversation.objects.share(conversation_with_answer(bob, "Bob's"))
    client.force_login(superuser)
    url = reverse("admin:chat_conversation_delete", args=[link.conversation_id])
    assert "permission" not in client.get(url).content.decode().lower()
    assert client.post(url, {"post": "yes"}).status_code == 302
    assert not SharedConversation.objects.filter(pk=link.pk).exists()
    assert Client().get(f"/s/{link.token}/").status_code == 404
    assert AuditEvent.objects.filter(action="deleted").count() == 1
    assert client.post(reverse("admin:auth_user_delete", args=[bob.pk]), {"post": "yes"}).status_code == 302
    assert not SharedConversation.objects.exists()
    assert Client().get(f"/s/{other.token}/").status_code == 404


def test_str_of_a_link_names_no_text_and_no_whole_token(link):
    assert link.token not in str(link)
    assert "Reversing" not in str(link)
    assert str(uuid.UUID(str(link.conversation_id))) in str(link)
