from django.contrib import admin
from django.db.models import Count, Sum

from chat.models import Conversation, Message, ServerProcess


class MessageInline(admin.TabularInline):
    model = Message
    fields = ["created_at", "role", "status", "text", "model", "input_tokens", "output_tokens", "error_message"]
    readonly_fields = fields
    extra = 0
    can_delete = False
    show_change_link = True

    def has_add_permission(self, request, obj=None):
        return False


@admin.register(Conversation)
class ConversationAdmin(admin.ModelAdmin):
    list_display = ["title", "owner", "model", "message_count", "total_tokens", "updated_at"]
    list_filter = ["model", "created_at"]
    list_select_related = ["owner"]
    search_fields = ["title", "owner__username"]
    date_hierarchy = "created_at"
    raw_id_fields = ["owner"]
    readonly_fields = ["id", "owner", "created_at", "updated_at"]
    inlines = [MessageInline]

    def get_queryset(self, request):
        return (
            super()
            .get_queryset(request)
            .annotate(message_count=Count("messages"), total_tokens=Sum("messages__total_tokens"))
        )

    @admin.display(description="messages", ordering="message_count")
    def message_count(self, conversation):
        return conversation.message_count

    @admin.display(description="tokens", ordering="total_tokens")
    def total_tokens(self, conversation):
        return conversation.total_tokens or 0


@admin.register(Message)
class MessageAdmin(admin.ModelAdmin):
    list_display = ["id", "conversation", "role", "status", "model", "total_tokens", "created_at"]
    list_filter = ["status", "role", "model", "created_at"]
    list_select_related = ["conversation"]
    search_fields = ["text", "conversation__title", "response_id"]
    date_hierarchy = "created_at"
    raw_id_fields = ["conversation"]
    readonly_fields = [field.name for field in Message._meta.fields]

    def has_add_permission(self, request):
        return False


@admin.register(ServerProcess)
class ServerProcessAdmin(admin.ModelAdmin):
    list_display = ["hostname", "pid", "started_at", "last_seen_at"]
    readonly_fields = ["id", "hostname", "pid", "started_at", "last_seen_at"]

    def has_add_permission(self, request):
        return False
