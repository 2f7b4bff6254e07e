"""Every door through which staff could see or probe transcript text: audited or refused.

Through the real admin with Django's test client, as a reviewer (staff with the view permissions
only) and as a superuser. The doors are enumerated; each is either refused (400, 403) with no text
in the answer and nothing recorded, or answered with an audit row that says who, what and the
query. The decisions are written down in chat/admin.py (TranscriptAdmin).
"""

import json

import pytest
from django.apps import apps
from django.contrib import admin
from django.contrib.admin.models import LogEntry
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from django.db import connection, models
from django.urls import reverse
from django.utils import timezone

from chat.admin_guards import StrictAdminMixin
from chat.models import AuditEvent, Conversation, Message
from tests.conftest import make_user
from tests.factories import conversation_with_answer

pytestmark = pytest.mark.django_db

SECRET = "opal-hunter-7731"
TITLE = "tell me the vault code please"


@pytest.fixture
def secret(alice):
    """A conversation whose title, answer, reasoning and instructions carry text to protect."""
    conversation = conversation_with_answer(
        alice, TITLE, answer=f"The code is {SECRET}.", reasoning=f"They want {SECRET}", error_message=SECRET
    )
    Conversation.objects.filter(pk=conversation.pk).update(instructions=f"Never say {SECRET}")
    return conversation


def changelist(model):
    return reverse(f"admin:chat_{model}_changelist")


def assert_nothing_shown(response):
    page = response.content.decode()
    assert SECRET not in page
    assert TITLE not in page


# --- Refused doors ------------------------------------------------------------------------------

REFUSED_LOOKUPS = [
    # Transcript text, on the model itself: every lookup and transform, exact ones too.
    ("message", {"text__startswith": "T"}),
    ("message", {"text": "x"}),
    ("message", {"text__regex": "("}),
    ("message", {"text__length__gt": "3"}),
    ("message", {"text__isnull": "False"}),
    ("message", {"reasoning__icontains": "opal"}),
    ("message", {"refusal__startswith": "x"}),
    ("message", {"error_message__startswith": "o"}),
    ("conversation", {"title__startswith": "t"}),
    ("conversation", {"title__iregex": "^t"}),
    ("conversation", {"instructions__contains": "opal"}),
    # Through relations, declared as a filter or not.
    ("message", {"conversation__title__startswith": "t"}),
    ("message", {"conversation__instructions__contains": "opal"}),
    ("message", {"conversation__messages__text__startswith": "T"}),
    ("message", {"parent__text__startswith": "t"}),
    ("message", {"conversation__owner__conversations__title__startswith": "t"}),
    ("conversation", {"messages__text__contains": "opal"}),
    ("conversation", {"current__text__startswith": "T"}),
    ("conversation", {"owner__conversations__messages__text__contains": "opal"}),
    # Regular expressions on any field: their cost is the pattern's to choose.
    ("message", {"model__regex": ".*"}),
    ("conversation", {"id__iregex": "."}),
    # Raw-id popups: read-only records are never picked by a form.
    ("conversation", {"_popup": "1", "_to_field": "id"}),
    ("conversation", {"_popup": "1"}),
    ("message", {"_popup": "1"}),
    ("message", {"_to_field": "id"}),
]


@pytest.mark.parametrize("model, params", REFUSED_LOOKUPS, ids=lambda value: str(value))
def test_probing_transcript_text_through_the_query_string_is_refused(
    client, reviewer, superuser, secret, model, params
):
    for user in (reviewer, superuser):
        client.force_login(user)
        response = client.get(changelist(model), params)
        assert response.status_code in (400, 403), response.status_code
        assert_nothing_shown(response)
    assert not AuditEvent.objects.exists()


@pytest.mark.parametrize(
    "url_name, params",
    [
        ("admin:chat_auditevent_changelist", {"conversation_title__startswith": "t"}),
        ("admin:chat_auditevent_changelist", {"conversation__title__startswith": "t"}),
        ("admin:chat_auditevent_changelist", {"conversation__messages__text__contains": "opal"}),
        ("admin:auth_user_changelist", {"conversations__title__startswith": "t"}),
        ("admin:auth_user_changelist", {"conversations__messages__text__contains": "opal"}),
        ("admin:auth_user_changelist", {"conversations__instructions__contains": "opal"}),
    ],
)
def test_other_admins_refuse_lookups_that_reach_transcript_text(client, superuser, secret, url_name, params):
    AuditEvent.record(superuser, AuditEvent.Action.VIEWED, [secret])
    client.force_login(superuser)
    response = client.get(reverse(url_name), params)
    assert response.status_code == 400
    assert SECRET not in response.content.decode()


@pytest.mark.parametrize(
    "model_name, field_name",
    [
        ("message", "conversation"),  # answered with conversations found by message text
        ("auditevent", "conversation"),
        ("conversation", "current"),
        ("message", "parent"),
        ("conversation", "owner"),
        ("accountlimits", "user"),
    ],
)
def test_autocomplete_answers_no_field_that_no_admin_declares(
    client, reviewer, superuser, secret, model_name, field_name
):
    url = reverse("admin:autocomplete")
    for user in (reviewer, superuser):
        client.force_login(user)
        params = {"app_label": "chat", "model_name": model_name, "field_name": field_name, "term": "opal"}
        response = client.get(url, params)
        assert response.status_code == 403
        assert_nothing_shown(response)
    assert not AuditEvent.objects.exists()


def test_a_declared_autocomplete_still_cannot_search_transcripts(client, reviewer, secret, monkeypatch):
    """Should an admin declare one some day, the transcript admin refuses searches outside its list."""
    monkeypatch.setattr(admin.site.get_model_admin(Message), "autocomplete_fields", ["conversation"])
    client.force_login(reviewer)
    params = {"app_label": "chat", "model_name": "message", "field_name": "conversation", "term": "opal"}
    response = client.get(reverse("admin:autocomplete"), params)
    assert response.status_code == 403
    assert_nothing_shown(response)
    assert not AuditEvent.objects.exists()


def test_a_transcript_page_is_not_offered_as_a_popup(client, reviewer, secret):
    client.force_login(reviewer)
    for url in (
        reverse("admin:chat_conversation_change", args=[secret.pk]),
        reverse("admin:chat_message_change", args=[secret.messages.first().pk]),
        reverse("admin:chat_conversation_history", args=[secret.pk]),
    ):
        response = client.get(url, {"_popup": "1"})
        assert response.status_code == 403
        assert_nothing_shown(response)
    assert not AuditEvent.objects.exists()


# --- Audited doors ------------------------------------------------------------------------------


def this_year():
    return str(timezone.now().year)


AUDITED_LISTS = [
    ("conversation", {}, "listed", True),
    ("conversation", {"q": "opal-hunter"}, "searched", True),  # finds message text
    ("conversation", {"q": "vault code"}, "searched", True),  # finds the title
    ("conversation", {"q": "no such words"}, "searched", False),  # a miss is an answer too
    ("conversation", {"o": "1"}, "listed", True),  # by title
    ("conversation", {"o": "-1.4"}, "listed", True),
    ("conversation", {"created_at__year": this_year()}, "listed", True),  # date hierarchy
    ("conversation", {"last_status": "completed"}, "listed", True),
    ("conversation", {"model": "test-model", "_facets": "True"}, "listed", True),
    ("conversation", {"p": "1", "all": ""}, "listed", True),
    ("message", {}, "listed", True),
    ("message", {"q": "opal-hunter"}, "searched", True),
    ("message", {"q": "tell me"}, "searched", True),  # the conversation's title
    ("message", {"status__exact": "completed", "role__exact": "assistant"}, "listed", True),
    ("message", {"created_at__year": this_year(), "o": "-7"}, "listed", True),
]


@pytest.mark.parametrize("model, params, action, found", AUDITED_LISTS, ids=lambda value: str(value))
def test_every_list_page_is_audited_with_its_query(client, reviewer, secret, model, params, action, found):
    client.force_login(reviewer)
    response = client.get(changelist(model), params)
    assert response.status_code == 200
    event = AuditEvent.objects.get()
    assert (event.staff, event.staff_username, event.action, event.conversation) == (reviewer, "reviewer", action, None)
    assert event.query == "&".join(f"{key}={value}" for key, value in params.items())
    assert event.shown == ([str(secret.pk)] if found else [])
    if params.get("q"):
        assert repr(params["q"]) in event.detail


def test_a_list_answered_with_an_error_records_nothing(client, reviewer, secret):
    client.force_login(reviewer)
    assert client.get(changelist("conversation"), {"created_at__gte": "notadate"}).status_code == 400
    assert not AuditEvent.objects.exists()


def test_the_transcript_and_message_pages_are_audited(client, reviewer, secret):
    client.force_login(reviewer)
    answer = secret.messages.get(role=Message.Role.ASSISTANT)
    assert SECRET in client.get(reverse("admin:chat_conversation_change", args=[secret.pk])).content.decode()
    assert SECRET in client.get(reverse("admin:chat_message_change", args=[answer.pk])).content.decode()
    events = AuditEvent.objects.order_by("at")
    assert [(event.action, event.conversation, event.detail) for event in events] == [
        ("viewed", secret, "transcript page"),
        ("viewed", secret, f"message {answer.pk}"),
    ]


def test_an_export_of_a_whole_search_is_audited_with_the_search(client, reviewer, secret, bob):
    conversation_with_answer(bob, "an unrelated question")
    client.force_login(reviewer)
    response = client.post(
        changelist("conversation") + "?q=opal-hunter",
        {"action": "export_json", "select_across": "1", "_selected_action": [str(secret.pk)]},
    )
    assert [record["title"] for record in json.loads(response.content)["conversations"]] == [TITLE]
    event = AuditEvent.objects.get()
    assert (event.action, event.conversation, event.query) == ("exported", secret, "q=opal-hunter")


@pytest.mark.parametrize("model", ["conversation", "message"])
def test_history_pages_name_objects_without_their_text(client, reviewer, secret, model):
    """str() of a transcript object carries no text, so the history page shows none."""
    target = secret if model == "conversation" else secret.messages.first()
    client.force_login(reviewer)
    response = client.get(reverse(f"admin:chat_{model}_history", args=[target.pk]))
    assert response.status_code == 200
    assert_nothing_shown(response)


def test_the_message_list_names_conversations_without_their_titles(client, reviewer, secret):
    client.force_login(reviewer)
    response = client.get(changelist("message"))
    assert_nothing_shown(response)
    assert f"Conversation {secret.pk}" in response.content.decode()


# --- Deleting transcripts -----------------------------------------------------------------------


@pytest.fixture
def deleter(db):
    """Staff holding every delete permission on chats and users, but not a superuser."""
    user = make_user("deleter", is_staff=True)
    codenames = [f"{verb}_{model}" for verb in ("view", "delete") for model in ("conversation", "message", "user")]
    user.user_permissions.add(*Permission.objects.filter(codename__in=codenames))
    return user


def test_only_superusers_delete_transcripts_even_with_the_delete_permissions(client, deleter, secret):
    client.force_login(deleter)
    answer = secret.messages.get(role=Message.Role.ASSISTANT)
    for url in (
        reverse("admin:chat_conversation_delete", args=[secret.pk]),
        reverse("admin:chat_message_delete", args=[answer.pk]),
    ):
        assert client.get(url).status_code == 403
        assert client.post(url, {"post": "yes"}).status_code == 403
    for model, pk in (("conversation", secret.pk), ("message", answer.pk)):
        page = client.get(changelist(model))
        assert "delete_selected" not in page.content.decode()
        # Not an action this user has: Django answers with the list again, having deleted nothing.
        client.post(changelist(model), {"action": "delete_selected", "_selected_action": [str(pk)], "post": "yes"})
    # Deleting the owner would delete the transcripts with it: refused the same way.
    user_delete = reverse("admin:auth_user_delete", args=[secret.owner.pk])
    assert "Cannot delete" in client.get(user_delete).content.decode()
    assert client.post(user_delete, {"post": "yes"}).status_code == 403
    assert Conversation.objects.filter(pk=secret.pk).exists() and Message.objects.filter(pk=answer.pk).exists()
    assert not AuditEvent.objects.filter(action="deleted").exists()


def test_a_superusers_deletion_is_audited_and_the_row_outlives_the_conversation(client, superuser, secret):
    client.force_login(superuser)
    url = reverse("admin:chat_conversation_delete", args=[secret.pk])
    confirmation = client.get(url)
    assert confirmation.status_code == 200
    assert_nothing_shown(confirmation)  # the page and its list of messages name them by id
    assert client.post(url, {"post": "yes"}, follow=True).status_code == 200
    assert not Conversation.objects.filter(pk=secret.pk).exists()
    event = AuditEvent.objects.get(action="deleted")
    assert (event.staff, event.conversation, event.conversation_title, event.conversation_owner) == (
        superuser,
        None,
        TITLE,
        "alice",
    )
    assert event.detail == "admin, with its 2 messages"
    # The admin's own log, shown on its index page, names it by id.
    assert LogEntry.objects.get().object_repr == f"Conversation {secret.pk}"
    assert_nothing_shown(client.get(reverse("admin:index")))


def test_delete_selected_is_audited_per_conversation_and_per_message(client, superuser, secret, bob):
    other = conversation_with_answer(bob, "bob asks something")
    client.force_login(superuser)
    selected = [str(secret.pk), str(other.pk)]
    confirmation = client.post(changelist("conversation"), {"action": "delete_selected", "_selected_action": selected})
    assert_nothing_shown(confirmation)
    client.post(changelist("conversation"), {"action": "delete_selected", "_selected_action": selected, "post": "yes"})
    assert not Conversation.objects.exists()
    assert sorted(
        AuditEvent.objects.filter(action="deleted").values_list("conversation_title", "conversation_owner")
    ) == [
        ("bob asks something", "bob"),
        (TITLE, "alice"),
    ]

    third = conversation_with_answer(bob, "a third one")
    answer = third.messages.get(role=Message.Role.ASSISTANT)
    client.post(
        changelist("message"), {"action": "delete_selected", "_selected_action": [str(answer.pk)], "post": "yes"}
    )
    assert list(third.messages.values_list("role", flat=True)) == ["user"]
    event = AuditEvent.objects.get(action="deleted", conversation=third)
    assert event.detail == f"admin, assistant message {answer.pk} and the messages after it"


def test_deleting_a_user_audits_the_deletion_of_their_conversations(client, superuser, secret):
    client.force_login(superuser)
    url = reverse("admin:auth_user_delete", args=[secret.owner.pk])
    assert_nothing_shown(client.get(url))
    client.post(url, {"post": "yes"})
    assert not get_user_model().objects.filter(username="alice").exists()
    event = AuditEvent.objects.get(action="deleted")
    assert (event.conversation_title, event.conversation_owner, event.detail) == (
        TITLE,
        "alice",
        "admin, with its owner",
    )


def test_a_conversation_being_answered_cannot_be_deleted(client, superuser, secret):
    Message.objects.filter(conversation=secret, role=Message.Role.ASSISTANT).update(status=Message.Status.STREAMING)
    client.force_login(superuser)
    assert client.post(reverse("admin:chat_conversation_delete", args=[secret.pk]), {"post": "yes"}).status_code == 403
    question = secret.messages.get(role=Message.Role.USER)
    assert client.post(reverse("admin:chat_message_delete", args=[question.pk]), {"post": "yes"}).status_code == 403
    assert secret.messages.count() == 2
    assert not AuditEvent.objects.exists()


# --- Transcripts hidden -------------------------------------------------------------------------


def test_with_transcripts_hidden_no_page_shows_a_title_or_a_text(client, superuser, reviewer, secret, settings):
    AuditEvent.record(reviewer, AuditEvent.Action.VIEWED, [secret], detail="transcript page")
    event = AuditEvent.objects.get()
    answer = secret.messages.get(role=Message.Role.ASSISTANT)
    settings.CHAT_STAFF_CAN_READ_TRANSCRIPTS = False
    closed = [
        changelist("conversation"),
        changelist("conversation") + "?q=opal",
        changelist("message"),
        changelist("message") + "?_popup=1",
        reverse("admin:chat_conversation_change", args=[secret.pk]),
        reverse("admin:chat_conversation_history", args=[secret.pk]),
        reverse("admin:chat_conversation_delete", args=[secret.pk]),
        reverse("admin:chat_message_change", args=[answer.pk]),
        reverse("admin:chat_message_history", args=[answer.pk]),
        reverse("admin:chat_message_delete", args=[answer.pk]),
        reverse("admin:autocomplete") + "?app_label=chat&model_name=message&field_name=conversation&term=opal",
    ]
    open_pages = [
        reverse("admin:index"),
        reverse("admin:chat_usage_report"),
        changelist("auditevent"),
        changelist("auditevent") + "?q=vault",
        reverse("admin:chat_auditevent_change", args=[event.pk]),
        reverse("admin:auth_user_change", args=[secret.owner.pk]),
        reverse("admin:auth_user_delete", args=[secret.owner.pk]),
    ]
    for user in (reviewer, superuser):
        client.force_login(user)
        for url in closed:
            response = client.get(url)
            assert response.status_code == 403, url
            assert_nothing_shown(response)
    client.force_login(superuser)
    for url in open_pages:
        response = client.get(url)
        assert response.status_code == 200, url
        assert_nothing_shown(response)
    assert "reviewer" in client.get(changelist("auditevent")).content.decode()
    assert client.get(changelist("auditevent"), {"q": "vault"}).context["cl"].result_count == 0
    assert client.get(changelist("auditevent"), {"conversation_title__startswith": "t"}).status_code == 400
    # Nothing of them can be deleted, not even with their owner.
    assert client.post(reverse("admin:auth_user_delete", args=[secret.owner.pk]), {"post": "yes"}).status_code == 403
    assert Conversation.objects.filter(pk=secret.pk).exists()
    assert list(AuditEvent.objects.values_list("action", flat=True)) == ["viewed"]


# --- Malformed parameters: 400 on every change list ---------------------------------------------


def registered_models():
    return [model for model in apps.get_models() if admin.site.is_registered(model)]


def test_every_registered_admin_uses_the_strict_change_list():
    assert {model._meta.label for model in registered_models()} >= {
        "chat.Conversation",
        "chat.Message",
        "chat.AuditEvent",
        "chat.ServerProcess",
        "auth.User",
        "auth.Group",
    }
    for model in registered_models():
        assert isinstance(admin.site.get_model_admin(model), StrictAdminMixin), model


MALFORMED = [
    {"pk__in": "x"},
    {"pk__gt": "not-a-key"},
    {"pk__regex": "("},
    {"no_such_field": "1"},
    {"o": "abc"},
    {"o": "99"},
    {"o": "1.x"},
    {"p": "abc"},
    {"p": "0"},
]


def date_cases(model):
    """Dates that are no dates, for a model with a date field."""
    for field in model._meta.fields:
        if isinstance(field, models.DateTimeField):
            return [{f"{field.name}__gte": "notadate"}, {f"{field.name}__lt": "2026-13-01"}]
    return []


@pytest.mark.parametrize("model", registered_models(), ids=lambda model: model._meta.label)
def test_every_change_list_answers_400_to_malformed_parameters(client, superuser, secret, model):
    client.force_login(superuser)
    url = reverse(f"admin:{model._meta.app_label}_{model._meta.model_name}_changelist")
    for params in [*MALFORMED, *date_cases(model)]:
        response = client.get(url, params)
        assert response.status_code == 400, (params, response.status_code)
        assert "Traceback" not in response.content.decode()
    assert not AuditEvent.objects.exists()


@pytest.mark.parametrize(
    "model, params",
    [
        ("message", {"text__regex": "("}),
        ("message", {"created_at__year": "99999"}),
        ("conversation", {"created_at__year": "2026", "created_at__month": "13"}),  # the date hierarchy's
    ],
)
def test_values_the_database_cannot_take_answer_400_not_500(client, superuser, secret, model, params):
    client.force_login(superuser)
    assert client.get(changelist(model), params).status_code == 400


def test_an_integer_beyond_the_databases_answers_400_where_it_cannot_be_compared(client, reviewer, secret):
    """SQLite cannot take it (400); PostgreSQL compares it as a number and answers the list."""
    client.force_login(reviewer)
    response = client.get(changelist("message"), {"total_tokens__in": f"15,{2**70}"})
    if connection.vendor == "sqlite":
        assert response.status_code == 400
        assert not AuditEvent.objects.exists()
    else:
        assert response.status_code == 200
        assert AuditEvent.objects.get().shown == [str(secret.pk)]


def test_a_lookup_the_database_cannot_do_answers_400(client, superuser, secret):
    AuditEvent.record(superuser, AuditEvent.Action.VIEWED, [secret])
    client.force_login(superuser)
    response = client.get(changelist("auditevent"), {"shown__contains": "x"})
    assert response.status_code == (200 if connection.features.supports_json_field_contains else 400)


def test_a_nul_byte_is_answered_and_never_breaks_the_audit_trail(client, reviewer, secret):
    """SQLite compares with it; PostgreSQL refuses it (400). No 500, and no NUL stored."""
    client.force_login(reviewer)
    response = client.get(changelist("message"), {"model": "test\x00model"})
    if connection.vendor == "postgresql":
        assert response.status_code == 400
        assert not AuditEvent.objects.exists()
    else:
        assert response.status_code == 200
        assert AuditEvent.objects.get().query == "model=testmodel"
