"""The admin: transcripts are read-only records, every reading is audited, usage is reported."""

import datetime

from django import forms
from django.conf import settings
from django.contrib import admin
from django.contrib.auth import get_user_model
from django.contrib.auth.admin import UserAdmin
from django.core.exceptions import PermissionDenied
from django.db.models import Count, IntegerField, OuterRef, Q, Subquery, Sum
from django.db.models.functions import Coalesce
from django.http import HttpResponse
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils import timezone

from chat.models import CHARS_PER_TOKEN, AccountLimits, AuditEvent, Conversation, Message, ServerProcess, UsageEntry
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


class TranscriptAccessMixin:
    """Transcripts are records: nobody adds or edits them here, and a setting can hide them all."""

    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_view_permission(self, request, obj=None):
        return settings.CHAT_STAFF_CAN_READ_TRANSCRIPTS and super().has_view_permission(request, obj)

    def has_module_permission(self, request):
        return settings.CHAT_STAFF_CAN_READ_TRANSCRIPTS and super().has_module_permission(request)


class LastAnswerStatusFilter(admin.SimpleListFilter):
    title = "last answer"
    parameter_name = "last_status"

    def lookups(self, request, model_admin):
        return Message.Status.choices

    def queryset(self, request, queryset):
        if self.value():
            return queryset.filter(last_status=self.value())
        return queryset


@admin.register(Conversation)
class ConversationAdmin(TranscriptAccessMixin, admin.ModelAdmin):
    list_display = ["title", "owner", "model", "message_count", "total_tokens", "updated_at", "last_status"]
    list_filter = [("owner", admin.RelatedOnlyFieldListFilter), "model", LastAnswerStatusFilter, "created_at"]
    list_select_related = ["owner"]
    search_fields = ["title", "owner__username", "messages__text"]
    date_hierarchy = "created_at"
    raw_id_fields = ["owner"]
    fields = ["id", "title", "owner", "model", "instructions", "created_at", "updated_at"]
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

    @admin.display(description="messages", ordering="message_count")
    def message_count(self, conversation):
        return conversation.message_count

    @admin.display(description="tokens", ordering="total_tokens")
    def total_tokens(self, conversation):
        return conversation.total_tokens

    @admin.display(description="last answer", ordering="last_status")
    def last_status(self, conversation):
        return conversation.last_status or "—"

    def change_view(self, request, object_id, form_url="", extra_context=None):
        conversation = self.get_object(request, object_id)
        if conversation is not None and self.has_view_permission(request, conversation):
            AuditEvent.record(request.user, AuditEvent.Action.VIEWED, [conversation])
            extra_context = {
                **(extra_context or {}),
                "transcript": conversation.messages.order_by("created_at"),
                # Regenerated and edited messages keep their earlier versions: marked, not hidden.
                "on_current_path": {message.id for message in conversation.path()},
                "readers": conversation.audit_events.order_by("-at")[:20] if request.user.is_superuser else None,
            }
        return super().change_view(request, object_id, form_url, extra_context)

    def _export(self, request, queryset, format):
        text, extension = export(queryset.order_by("created_at"), format)
        AuditEvent.record(
            request.user, AuditEvent.Action.EXPORTED, queryset.select_related("owner"), detail=f"{format}, admin action"
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

    def get_urls(self):
        report = self.admin_site.admin_view(usage_report)
        return [path("usage/", report, name="chat_usage_report"), *super().get_urls()]


@admin.register(Message)
class MessageAdmin(TranscriptAccessMixin, admin.ModelAdmin):
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
    ]
    list_filter = ["status", "role", "model", "created_at", ("conversation__owner", admin.RelatedOnlyFieldListFilter)]
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

    def change_view(self, request, object_id, form_url="", extra_context=None):
        message = self.get_object(request, object_id)
        if message is not None and self.has_view_permission(request, message):
            AuditEvent.record(
                request.user, AuditEvent.Action.VIEWED, [message.conversation], detail=f"message {message.id}"
            )
        return super().change_view(request, object_id, form_url, extra_context)


@admin.register(AuditEvent)
class AuditEventAdmin(admin.ModelAdmin):
    """Who read or exported which transcript: visible to superusers only, and never editable."""

    list_display = ["at", "staff_username", "action", "conversation_title", "conversation_owner", "detail"]
    list_filter = ["action", "staff_username", "conversation_owner", "at"]
    search_fields = ["staff_username", "conversation_title", "conversation_owner"]
    date_hierarchy = "at"
    readonly_fields = [field.name for field in AuditEvent._meta.fields]

    def has_module_permission(self, request):
        return request.user.is_active and request.user.is_superuser

    def has_view_permission(self, request, obj=None):
        return request.user.is_active and request.user.is_superuser

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


@admin.register(UsageEntry)
class UsageEntryAdmin(admin.ModelAdmin):
    """The ledger of spending, one entry per answer: a record, so nobody adds, edits or deletes one.

    No transcript text is in it, so it stays visible when transcripts are hidden.
    """

    list_display = [
        "day",
        "username",
        "model",
        "status",
        "input_tokens",
        "output_tokens",
        "total_tokens",
        "estimated",
        "reserved_tokens",
        "recorded_at",
    ]
    list_filter = ["estimated", "status", "model", "day"]
    search_fields = ["username", "=message_id"]
    date_hierarchy = "day"
    readonly_fields = [field.name for field in UsageEntry._meta.fields]

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


@admin.register(ServerProcess)
class ServerProcessAdmin(admin.ModelAdmin):
    list_display = ["hostname", "pid", "started_at", "last_seen_at"]
    readonly_fields = ["id", "hostname", "pid", "started_at", "last_seen_at"]

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False


class AccountLimitsInline(admin.StackedInline):
    model = AccountLimits
    fields = ["daily_token_budget"]
    extra = 0
    max_num = 1
    can_delete = False


User = get_user_model()
admin.site.unregister(User)


@admin.register(User)
class ChatUserAdmin(UserAdmin):
    inlines = [*UserAdmin.inlines, AccountLimitsInline]


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
        answers=Count("id"),
        failures=Count("id", filter=Q(status=Message.Status.FAILED)),
    )
    estimated = Coalesce(Sum("total_tokens", filter=Q(estimated=True)), 0)
    rows = (
        entries.values("day", "username", "model")
        # The estimate first: after `measures`, "total_tokens" would name their sum.
        .annotate(estimated_tokens=estimated, **measures)
        .order_by("-day", "username", "model")
    )
    return list(rows), entries.aggregate(**measures), entries.aggregate(value=estimated)["value"]


def usage_report(request):
    if not request.user.has_perm("chat.view_message"):
        raise PermissionDenied
    today = timezone.localdate()
    form = UsageRangeForm(request.GET or {"start": today - datetime.timedelta(days=6), "end": today})
    rows, totals, estimated_total = ([], None, 0)
    if form.is_valid():
        rows, totals, estimated_total = usage_rows(form.cleaned_data["start"], form.cleaned_data["end"])
    context = {
        **admin.site.each_context(request),
        "title": "Usage report",
        "form": form,
        "rows": rows,
        "totals": totals,
        "estimated_total": estimated_total,
        "chars_per_token": CHARS_PER_TOKEN,
        "opts": Conversation._meta,
        "changelist_url": reverse("admin:chat_conversation_changelist"),
    }
    return TemplateResponse(request, "admin/chat/usage_report.html", context)
