"""The admin: transcripts are read-only records, every door to their text is audited or refused, usage is reported."""

import datetime

from django import forms
from django.conf import settings
from django.contrib import admin
from django.contrib.admin.options import IS_POPUP_VAR, TO_FIELD_VAR
from django.contrib.auth import get_user_model
from django.contrib.auth.admin import GroupAdmin, UserAdmin
from django.contrib.auth.models import Group
from django.core.exceptions import PermissionDenied
from django.db import transaction
from django.db.models import Count, IntegerField, OuterRef, Prefetch, Q, Subquery, Sum
from django.db.models.functions import Coalesce
from django.http import Http404, HttpResponse
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils import timezone

from chat import attachments
from chat.admin_guards import StrictAdminMixin
from chat.models import (
    CHARS_PER_TOKEN,
    AccountLimits,
    Attachment,
    AuditEvent,
    Conversation,
    Message,
    MessageAttachment,
    ServerProcess,
    SharedConversation,
    UsageEntry,
)
from chat.transcripts import export


def _per_conversation(queryset, aggregate):
    """A correlated subquery: one aggregate over a conversation's messages, without a join that
    would multiply rows once the change list also searches message text."""
    return Coalesce(
        Subquery(
            queryset.filter(conversation=OuterRef("pk"))
            .values("conversation")
            .annotate(value=aggregate)
            .values("value"),
            output_field=IntegerField(),
        ),
        0,
    )


def query_of(request):
    """The query string as staff typed it (decoded), for the audit trail."""
    return "&".join(f"{key}={value}" for key, values in request.GET.lists() for value in values)


class ReadOnlyAdminMixin:
    """Rows the site writes itself: nobody adds or edits one in the admin."""

    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False


class TranscriptAdmin(ReadOnlyAdminMixin, StrictAdminMixin, admin.ModelAdmin):
    """Transcripts are records: nobody adds or edits them here, a setting can hide them all, and
    every door through which staff could see or probe their text is audited or refused.

    The doors, decided one by one (tests/test_audit.py goes through each):

    - change list, with its search (`?q=`), filters, date hierarchy, ordering (`?o=`, by column
      number only), facets and pages: AUDITED, one `listed` or `searched` row per page shown,
      with the query string and the ids of the conversations on the page. The conversation list
      shows titles; a search probes message text whatever it shows.
    - lookups in the query string on transcript text (`?text__startswith=`, `?title__regex=`,
      `?conversation__messages__text=` …, through any relation) and regular-expression lookups:
      REFUSED, 400 (chat/admin_guards.py). Lookups outside the declared filters through relations
      were refused by Django already; malformed values answer 400 as well.
    - the transcript and message pages: AUDITED, a `viewed` row.
    - an attachment's file, linked (and, for images, shown as a thumbnail) on the transcript page:
      AUDITED, a `downloaded` row per fetch naming the attachment; served with the owner's
      download's headers (chat.attachments.file_response); only an attachment of a message of
      that conversation, else 404.
    - raw-id popups (`?_popup=1`, `?_to_field=`): REFUSED, 403. Transcripts are read-only and no
      form picks a conversation or a message, so a popup has no use but listing.
    - autocomplete: REFUSED, 403, for every field no admin declares (chat/admin_site.py); none
      is declared on a transcript.
    - history pages, delete confirmations (of conversations, messages, or a user and everything
      that goes with it), the log of admin actions, foreign keys shown elsewhere: they name
      objects by str(), which carries no transcript text (Conversation.__str__), so they show
      none and are not audited.
    - deletion, single or "delete selected", also as part of deleting a user: SUPERUSERS ONLY,
      never while an answer is being written, AUDITED with a `deleted` row per conversation (or
      message) that keeps its title and owner after the row is gone.
    - exports, as admin actions: AUDITED, an `exported` row per conversation; from the command
      line see export_transcripts.
    - CHAT_STAFF_CAN_READ_TRANSCRIPTS=0: every door above is closed (403) to everyone,
      superusers included; the usage report stays, and shows no text.
    """

    def has_view_permission(self, request, obj=None):
        return settings.CHAT_STAFF_CAN_READ_TRANSCRIPTS and super().has_view_permission(request, obj)

    def has_module_permission(self, request):
        return settings.CHAT_STAFF_CAN_READ_TRANSCRIPTS and super().has_module_permission(request)

    def has_delete_permission(self, request, obj=None):
        user = request.user
        allowed = bool(settings.CHAT_STAFF_CAN_READ_TRANSCRIPTS) and user.is_active and user.is_superuser
        # A worker thread writing an answer would lose its row mid-stream (Conversation.discard).
        return allowed and (obj is None or not self.is_being_written(obj))

    @staticmethod
    def refuse_popups(request):
        if any(name in request.GET or name in request.POST for name in (IS_POPUP_VAR, TO_FIELD_VAR)):
            raise PermissionDenied("Transcripts are not offered for picking.")

    def conversations_shown(self, objects):
        raise NotImplementedError

    def change_view(self, request, object_id, form_url="", extra_context=None):
        """A transcript's page, whichever admin shows it: refused as a popup, and audited with a
        `viewed` row naming the conversation and what of it was shown (`viewed_as`)."""
        self.refuse_popups(request)
        shown = self.get_object(request, object_id)
        if shown is not None and self.has_view_permission(request, shown):
            conversation, detail = self.viewed_as(shown)
            AuditEvent.record(request.user, AuditEvent.Action.VIEWED, [conversation], detail=detail)
            extra_context = {**(extra_context or {}), **self.page_context(request, shown)}
        return super().change_view(request, object_id, form_url, extra_context)

    def viewed_as(self, shown):
        """(the conversation the page `shown` shows, the audit row's detail)."""
        raise NotImplementedError

    def page_context(self, request, shown):
        """What the page of `shown` adds to its template's context."""
        return {}

    def changelist_view(self, request, extra_context=None):
        self.refuse_popups(request)
        response = super().changelist_view(request, extra_context)
        changelist = (getattr(response, "context_data", None) or {}).get("cl")
        if changelist is not None:
            search = changelist.query
            detail = f"{self.opts.verbose_name_plural} list" + (f", search {search!r}" if search else "")
            AuditEvent.objects.bulk_create(
                [
                    AuditEvent.row(
                        request.user,
                        AuditEvent.Action.SEARCHED if search else AuditEvent.Action.LISTED,
                        detail=detail,
                        query=query_of(request),
                        shown=self.conversations_shown(changelist.result_list),
                    )
                ]
            )
        return response

    def get_search_results(self, request, queryset, search_term):
        """Only the change list searches transcripts, and it records each search (changelist_view).

        The site's autocomplete already refuses undeclared fields; this keeps a field declared
        one day from searching transcript text unaudited.
        """
        match = request.resolver_match
        if search_term and (
            match is None or match.url_name != f"{self.opts.app_label}_{self.opts.model_name}_changelist"
        ):
            raise PermissionDenied("Transcripts are searched in their change list only.")
        return super().get_search_results(request, queryset, search_term)

    def history_view(self, request, object_id, extra_context=None):
        self.refuse_popups(request)
        return super().history_view(request, object_id, extra_context)

    def delete_view(self, request, object_id, extra_context=None):
        self.refuse_popups(request)
        return super().delete_view(request, object_id, extra_context)


class LastAnswerStatusFilter(admin.SimpleListFilter):
    title = "last answer"
    parameter_name = "last_status"

    def lookups(self, request, model_admin):
        return Message.Status.choices

    def queryset(self, request, queryset):
        if self.value():
            return queryset.filter(last_status=self.value())
        return queryset


class FeedbackFilter(admin.SimpleListFilter):
    """Conversations by their owner's ratings: where transcript review starts."""

    title = "feedback"
    parameter_name = "feedback"

    def lookups(self, request, model_admin):
        return [("bad", "With a bad answer"), ("good", "With a good answer"), ("any", "With any feedback")]

    def queryset(self, request, queryset):
        rated = Message.objects.exclude(feedback="")
        if self.value() in Message.Feedback.values:
            rated = rated.filter(feedback=self.value())
        elif self.value() != "any":
            return queryset
        return queryset.filter(pk__in=rated.values("conversation_id"))


class ImportedFilter(admin.SimpleListFilter):
    """Conversations brought in from a file (by source) or chatted here. Imported answers never
    went upstream from this site: they are not in the usage ledger."""

    title = "origin"
    parameter_name = "origin"
    CHATTED_HERE = "here"

    def lookups(self, request, model_admin):
        return [
            (self.CHATTED_HERE, "chatted here"),
            *((value, f"imported: {label}") for value, label in Conversation.Source.choices),
        ]

    def queryset(self, request, queryset):
        if self.value() == self.CHATTED_HERE:
            return queryset.filter(imported_at=None)
        if self.value() in Conversation.Source.values:
            return queryset.filter(import_source=self.value())
        return queryset


@admin.register(Conversation)
class ConversationAdmin(TranscriptAdmin):
    list_display = ["title", "owner", "model", "message_count", "total_tokens", "updated_at", "last_status"]
    list_filter = [
        ("owner", admin.RelatedOnlyFieldListFilter),
        "model",
        LastAnswerStatusFilter,
        FeedbackFilter,
        ImportedFilter,
        "title_source",
        "created_at",
    ]
    list_select_related = ["owner"]
    search_fields = ["title", "owner__username", "messages__text"]
    date_hierarchy = "created_at"
    raw_id_fields = ["owner"]
    fields = [
        "id",
        "title",
        "title_source",
        "owner",
        "model",
        "instructions",
        "created_at",
        "updated_at",
        "pinned_at",
        "archived_at",
        "imported_at",
        "import_source",
        "import_key",
    ]
    readonly_fields = fields
    change_form_template = "admin/chat/conversation/transcript.html"
    change_list_template = "admin/chat/conversation/change_list.html"
    actions = ["export_json", "export_markdown"]

    def get_queryset(self, request):
        answers = Message.objects.filter(role=Message.Role.ASSISTANT)
        return (
            super()
            .get_queryset(request)
            .annotate(
                message_count=_per_conversation(Message.objects.all(), Count("*")),
                total_tokens=_per_conversation(Message.objects.all(), Sum("total_tokens")),
                last_status=Subquery(
                    answers.filter(conversation=OuterRef("pk")).order_by("-created_at").values("status")[:1]
                ),
            )
        )

    def conversations_shown(self, conversations):
        return [conversation.pk for conversation in conversations]

    @staticmethod
    def is_being_written(conversation):
        return conversation.messages.unfinished().exists()

    @admin.display(description="messages", ordering="message_count")
    def message_count(self, conversation):
        return conversation.message_count

    @admin.display(description="tokens", ordering="total_tokens")
    def total_tokens(self, conversation):
        return conversation.total_tokens

    @admin.display(description="last answer", ordering="last_status")
    def last_status(self, conversation):
        return conversation.last_status or "—"

    def viewed_as(self, conversation):
        return conversation, "transcript page"

    def page_context(self, request, conversation):
        links = MessageAttachment.objects.select_related("attachment")
        return {
            "transcript": conversation.messages.order_by("created_at").prefetch_related(
                Prefetch("attachment_links", queryset=links)
            ),
            # Regenerated and edited messages keep their earlier versions: marked, not hidden.
            "on_current_path": {message.id for message in conversation.path()},
            "readers": conversation.audit_events.order_by("-at")[:20] if request.user.is_superuser else None,
        }

    @transaction.atomic
    def delete_model(self, request, conversation):
        count = conversation.messages.count()
        AuditEvent.record(
            request.user, AuditEvent.Action.DELETED, [conversation], detail=f"admin, with its {count} messages"
        )
        super().delete_model(request, conversation)

    @transaction.atomic
    def delete_queryset(self, request, queryset):
        AuditEvent.record(
            request.user, AuditEvent.Action.DELETED, queryset.select_related("owner"), detail="admin, delete selected"
        )
        super().delete_queryset(request, queryset)

    def _export(self, request, queryset, format):
        text, extension = export(queryset.order_by("created_at"), format)
        AuditEvent.record(
            request.user,
            AuditEvent.Action.EXPORTED,
            queryset.select_related("owner"),
            detail=f"{format}, admin action",
            query=query_of(request),
        )
        response = HttpResponse(text, content_type="application/json" if format == "json" else "text/markdown")
        stamp = timezone.now().strftime("%Y%m%d-%H%M%S")
        response["Content-Disposition"] = f'attachment; filename="transcripts-{stamp}.{extension}"'
        return response

    @admin.action(description="Export selected conversations as JSON", permissions=["view"])
    def export_json(self, request, queryset):
        return self._export(request, queryset, "json")

    @admin.action(description="Export selected conversations as Markdown", permissions=["view"])
    def export_markdown(self, request, queryset):
        return self._export(request, queryset, "markdown")

    def attachment_view(self, request, object_id, attachment_id):
        """One attachment's file, for staff who may read the conversation; audited per fetch."""
        self.refuse_popups(request)
        conversation = self.get_object(request, object_id)
        if conversation is None:
            raise Http404("No such conversation.")
        if not self.has_view_permission(request, conversation):
            raise PermissionDenied
        found = Attachment.objects.in_conversation(conversation).filter(pk=attachment_id).first()
        if found is None:
            raise Http404("No such attachment in this conversation.")
        AuditEvent.record(request.user, AuditEvent.Action.DOWNLOADED, [conversation], detail=f"attachment {found.id}")
        return attachments.file_response(found)

    def get_urls(self):
        report = self.admin_site.admin_view(usage_report)
        attachment = self.admin_site.admin_view(self.attachment_view)
        return [
            path("usage/", report, name="chat_usage_report"),
            # Before the change view's catch-all `<object_id>/`.
            path("<path:object_id>/attachments/<uuid:attachment_id>/", attachment, name="chat_conversation_attachment"),
            *super().get_urls(),
        ]


@admin.register(Message)
class MessageAdmin(TranscriptAdmin):
    list_display = [
        "short_id",
        "conversation",
        "owner",
        "role",
        "status",
        "model",
        "total_tokens",
        "estimated_tokens",
        "created_at",
        "feedback",
    ]
    # error_code: staff find the answers that failed one way, e.g. empty_output (the model said nothing).
    # feedback: the answers their owners rated, to review.
    list_filter = [
        "feedback",
        "status",
        "error_code",
        "role",
        "model",
        "created_at",
        ("conversation__owner", admin.RelatedOnlyFieldListFilter),
    ]
    list_select_related = ["conversation__owner"]
    search_fields = ["text", "error_message", "conversation__title", "response_id"]
    date_hierarchy = "created_at"
    raw_id_fields = ["conversation"]
    readonly_fields = [field.name for field in Message._meta.fields]

    @admin.display(description="id")
    def short_id(self, message):
        return str(message.id)[:8]

    @admin.display(description="owner", ordering="conversation__owner__username")
    def owner(self, message):
        return message.conversation.owner

    def conversations_shown(self, messages):
        return list(dict.fromkeys(message.conversation_id for message in messages))

    @staticmethod
    def is_being_written(message):
        # Deleting a message deletes the messages after it, an answer being written among them.
        return not message.is_finished or message.conversation.messages.unfinished().exists()

    def viewed_as(self, message):
        return message.conversation, f"message {message.id}"

    def audit_deletion(self, request, messages):
        AuditEvent.objects.bulk_create(
            AuditEvent.row(
                request.user,
                AuditEvent.Action.DELETED,
                message.conversation,
                detail=f"admin, {message.role} message {message.id} and the messages after it",
            )
            for message in messages
        )

    @transaction.atomic
    def delete_model(self, request, message):
        self.audit_deletion(request, [message])
        super().delete_model(request, message)

    @transaction.atomic
    def delete_queryset(self, request, queryset):
        self.audit_deletion(request, queryset.select_related("conversation__owner"))
        super().delete_queryset(request, queryset)


class RecordAdminMixin(ReadOnlyAdminMixin):
    """A record the system writes: nobody adds, edits or deletes one in the admin."""

    def has_delete_permission(self, request, obj=None):
        return False


@admin.register(AuditEvent)
class AuditEventAdmin(RecordAdminMixin, StrictAdminMixin, admin.ModelAdmin):
    """Who saw, searched, exported or deleted which transcripts: for superusers only, never editable.

    A conversation's title is transcript text. The trail names conversations by it, for
    superusers, who may read the transcripts themselves, while transcripts are readable; with
    CHAT_STAFF_CAN_READ_TRANSCRIPTS=0 the column, the field and the search over it are gone, and
    lookups on it are refused always (StrictAdminMixin). Staff's query strings stay: they are what
    staff typed, not what the transcripts say.
    """

    list_display = ["at", "staff_username", "action", "conversation_title", "conversation_owner", "detail"]
    list_filter = ["action", "staff_username", "conversation_owner", "at"]
    search_fields = ["staff_username", "conversation_title", "conversation_owner", "detail", "query"]
    date_hierarchy = "at"
    fields = [
        "at",
        "staff",
        "staff_username",
        "action",
        "conversation",
        "conversation_title",
        "conversation_owner",
        "detail",
        "query",
        "shown",
    ]
    readonly_fields = fields

    @staticmethod
    def without_titles(names):
        if settings.CHAT_STAFF_CAN_READ_TRANSCRIPTS:
            return names
        return [name for name in names if name not in AuditEvent.TEXT_FIELDS]

    def get_list_display(self, request):
        return self.without_titles(super().get_list_display(request))

    def get_search_fields(self, request):
        return self.without_titles(super().get_search_fields(request))

    def get_fields(self, request, obj=None):
        return self.without_titles(super().get_fields(request, obj))

    def get_readonly_fields(self, request, obj=None):
        return self.without_titles(super().get_readonly_fields(request, obj))

    def has_module_permission(self, request):
        return request.user.is_active and request.user.is_superuser

    def has_view_permission(self, request, obj=None):
        return request.user.is_active and request.user.is_superuser


@admin.register(UsageEntry)
class UsageEntryAdmin(RecordAdminMixin, StrictAdminMixin, admin.ModelAdmin):
    """The ledger of spending, one entry per answer: a record, so nobody adds, edits or deletes one.

    No transcript text is in it, so it stays visible when transcripts are hidden.
    """

    list_display = [
        "day",
        "username",
        "model",
        "purpose",
        "status",
        "input_tokens",
        "output_tokens",
        "total_tokens",
        "estimated",
        "reserved_tokens",
        "max_output_tokens",
        "recorded_at",
    ]
    list_filter = ["purpose", "estimated", "status", "model", "day"]
    search_fields = ["username", "=message_id"]
    date_hierarchy = "day"
    readonly_fields = [field.name for field in UsageEntry._meta.fields]


@admin.register(ServerProcess)
class ServerProcessAdmin(ReadOnlyAdminMixin, StrictAdminMixin, admin.ModelAdmin):
    list_display = ["hostname", "pid", "started_at", "last_seen_at"]
    readonly_fields = ["id", "hostname", "pid", "started_at", "last_seen_at"]


class AccountLimitsInline(admin.TabularInline):
    model = AccountLimits
    fields = ["daily_token_budget"]
    # The one form is always there, empty until a budget is set (an unchanged form saves nothing):
    # no "Add another Chat limits" link, nor a Remove, for what a user has at most one of.
    extra = 0
    min_num = max_num = 1
    can_delete = False
    verbose_name = verbose_name_plural = "daily token budget"


User = get_user_model()
admin.site.unregister(User)
admin.site.unregister(Group)


@admin.register(User)
class ChatUserAdmin(StrictAdminMixin, UserAdmin):
    """Deleting a user deletes their conversations: only someone allowed to delete those may (the
    confirmation page asks ConversationAdmin.has_delete_permission for each), and it is audited."""

    inlines = [*UserAdmin.inlines, AccountLimitsInline]

    def audit_deletion(self, request, users):
        conversations = Conversation.objects.filter(owner__in=users).select_related("owner")
        AuditEvent.record(request.user, AuditEvent.Action.DELETED, conversations, detail="admin, with its owner")

    @transaction.atomic
    def delete_model(self, request, user):
        if user.conversations.exists():
            self.audit_deletion(request, [user])
        super().delete_model(request, user)

    @transaction.atomic
    def delete_queryset(self, request, queryset):
        if Conversation.objects.filter(owner__in=queryset).exists():
            self.audit_deletion(request, queryset)
        super().delete_queryset(request, queryset)


@admin.register(Group)
class ChatGroupAdmin(StrictAdminMixin, GroupAdmin):
    pass


class LiveLinkFilter(admin.SimpleListFilter):
    title = "state"
    parameter_name = "state"

    def lookups(self, request, model_admin):
        return [("live", "Live"), ("revoked", "Revoked")]

    def queryset(self, request, queryset):
        if self.value() == "live":
            return queryset.filter(revoked_at=None)
        if self.value() == "revoked":
            return queryset.exclude(revoked_at=None)
        return queryset


@admin.register(SharedConversation)
class SharedConversationAdmin(TranscriptAdmin):
    """Shared links and their frozen snapshots: transcript text, so read under the same rules.

    Lists and searches are audited by TranscriptAdmin, the snapshot page here, as `viewed`. Staff
    who may read transcripts may read these (view_conversation). The token is never shown whole
    nor looked up piece by piece (SharedConversation.TEXT_FIELDS): with it, the public page would
    show the snapshot unaudited. A search for a whole token (`=token`) finds a reported link.
    Superusers may revoke links, e.g. one reported for abuse, or delete them.
    """

    list_display = ["token_start", "conversation", "owner", "title", "message_count", "created_at", "revoked_at"]
    list_filter = [LiveLinkFilter, ("conversation__owner", admin.RelatedOnlyFieldListFilter), "created_at"]
    list_select_related = ["conversation__owner"]
    search_fields = ["=token", "conversation__owner__username"]
    date_hierarchy = "created_at"
    fields = ["token_start", "conversation", "owner", "title", "model", "created_at", "revoked_at"]
    readonly_fields = fields
    change_form_template = "admin/chat/sharedconversation/snapshot.html"
    actions = ["revoke_selected"]

    def has_view_permission(self, request, obj=None):
        return bool(settings.CHAT_STAFF_CAN_READ_TRANSCRIPTS) and request.user.has_perm("chat.view_conversation")

    def has_module_permission(self, request):
        return self.has_view_permission(request)

    # Deleting: TranscriptAdmin's rule (superusers). Deleting a conversation or a user deletes
    # their links, and the admin asks this admin whether it may.

    def has_revoke_permission(self, request):
        return bool(settings.CHAT_STAFF_CAN_READ_TRANSCRIPTS) and request.user.is_active and request.user.is_superuser

    def conversations_shown(self, links):
        return list(dict.fromkeys(link.conversation_id for link in links))

    @staticmethod
    def is_being_written(link):
        return False

    @admin.display(description="token")
    def token_start(self, link):
        return link.token_start

    @admin.display(description="owner", ordering="conversation__owner__username")
    def owner(self, link):
        return link.conversation.owner

    @admin.display(description="messages")
    def message_count(self, link):
        return len(link.messages)

    def viewed_as(self, link):
        return link.conversation, f"shared link {link.token_start}"

    def page_context(self, request, link):
        return {"snapshot": link.messages}

    @admin.action(description="Revoke selected links", permissions=["revoke"])
    def revoke_selected(self, request, queryset):
        revoked = queryset.revoke()
        self.message_user(request, f"{revoked} link{'' if revoked == 1 else 's'} revoked.")


# --- Usage report ---------------------------------------------------------------------------


class UsageRangeForm(forms.Form):
    start = forms.DateField(widget=forms.DateInput(attrs={"type": "date"}))
    end = forms.DateField(widget=forms.DateInput(attrs={"type": "date"}))

    def clean(self):
        data = super().clean()
        if data.get("start") and data.get("end") and data["start"] > data["end"]:
            raise forms.ValidationError("The start of the range is after its end.")
        return data


def usage_rows(start, end):
    """Tokens, answers and failures per day, user and model for the days start..end inclusive,
    with the totals and how many of the tokens are estimates.

    Read from the ledger (UsageEntry), not from the messages: deleting conversations, messages or
    users changes none of it.
    """
    entries = UsageEntry.objects.filter(day__gte=start, day__lte=end)
    measures = dict(
        input_tokens=Coalesce(Sum("input_tokens"), 0),
        output_tokens=Coalesce(Sum("output_tokens"), 0),
        total_tokens=Coalesce(Sum("total_tokens"), 0),
        # Title requests add their tokens, not answers or failures.
        answers=Count("id", filter=Q(purpose=UsageEntry.Purpose.ANSWER)),
        failures=Count("id", filter=Q(status=Message.Status.FAILED, purpose=UsageEntry.Purpose.ANSWER)),
    )
    estimated = Coalesce(Sum("total_tokens", filter=Q(estimated=True)), 0)
    rows = (
        entries.values("day", "username", "model")
        # The estimate first: after `measures`, "total_tokens" would name their sum.
        .annotate(estimated_tokens=estimated, **measures)
        .order_by("-day", "username", "model")
    )
    return list(rows), entries.aggregate(**measures), entries.aggregate(value=estimated)["value"]


RATINGS = dict(
    rated_good=Count("id", filter=Q(feedback=Message.Feedback.GOOD)),
    rated_bad=Count("id", filter=Q(feedback=Message.Feedback.BAD)),
)


def rating_counts(start, end):
    """The owners' thumbs up and down per day, user and model (the keys of usage_rows), and in all.

    From the ledger's copy of each answer's rating (Message.give_feedback), like the figures
    beside them: deleting the conversation later changes no count.
    """
    entries = UsageEntry.objects.filter(day__gte=start, day__lte=end)
    rows = entries.values("day", "username", "model").annotate(**RATINGS).order_by()
    counts = {(row.pop("day"), row.pop("username"), row.pop("model")): row for row in rows}
    return counts, entries.aggregate(**RATINGS)


def usage_report(request):
    if not request.user.has_perm("chat.view_message"):
        raise PermissionDenied
    today = timezone.localdate()
    form = UsageRangeForm(request.GET or {"start": today - datetime.timedelta(days=6), "end": today})
    rows, totals, estimated_total, rated_totals = ([], None, 0, None)
    if form.is_valid():
        start, end = form.cleaned_data["start"], form.cleaned_data["end"]
        rows, totals, estimated_total = usage_rows(start, end)
        ratings, rated_totals = rating_counts(start, end)
        none = dict.fromkeys(RATINGS, 0)
        rows = [row | ratings.get((row["day"], row["username"], row["model"]), none) for row in rows]
    context = {
        **admin.site.each_context(request),
        "title": "Usage report",
        "form": form,
        "rows": rows,
        "totals": totals,
        "estimated_total": estimated_total,
        "rated_totals": rated_totals,
        "chars_per_token": CHARS_PER_TOKEN,
        "opts": Conversation._meta,
        "changelist_url": reverse("admin:chat_conversation_changelist"),
    }
    return TemplateResponse(request, "admin/chat/usage_report.html", context)
