from django.conf import settings
from django.contrib.auth.decorators import login_required
from django.http import Http404, JsonResponse
from django.shortcuts import redirect, render
from django.templatetags.static import static
from django.urls import reverse
from django.views.decorators.http import require_GET, require_POST

from chat import limits, providers
from chat.models import Conversation, ConversationBusy


def page_context(request, conversation=None):
    conversations = Conversation.objects.owned_by(request.user).only("id", "title", "updated_at")
    # The path last shown or added to; the other versions are a chat.select away.
    messages = conversation.path_frames() if conversation else []
    offered = providers.providers()
    budget = limits.budget_status(request.user)
    return {
        "budget": budget,
        "conversations": conversations,
        "conversation": conversation,
        "page_data": {
            "conversation": conversation.as_frame() if conversation else None,
            "messages": messages,
            "models": [provider.model for provider in offered],
            "model_labels": {provider.model: provider.label for provider in offered},
            "max_message_chars": settings.CHAT_MAX_MESSAGE_CHARS,
            "image_hosts": settings.CHAT_IMAGE_HOSTS,
            "budget": budget,
        },
    }


@login_required
def home(request):
    return render(request, "chat/chat.html", page_context(request))


@login_required
def conversation(request, conversation_id):
    return render(request, "chat/chat.html", page_context(request, owned_or_404(request, conversation_id)))


# The sidebar's search answers at most this many conversations, most recent first.
SEARCH_LIMIT = 100


def owned_or_404(request, conversation_id):
    """The user's conversation; another user's answers exactly like one that does not exist."""
    try:
        return Conversation.objects.owned_by(request.user).get(pk=conversation_id)
    except Conversation.DoesNotExist:
        raise Http404("No such conversation.") from None


def sidebar_item(conversation):
    return {
        "id": str(conversation.id),
        "title": conversation.display_title,
        "url": reverse("chat:conversation", args=[conversation.id]),
    }


def invalid(message):
    return JsonResponse({"error": {"code": "invalid", "message": message}}, status=400)


@login_required
@require_GET
def search(request):
    found = Conversation.objects.search(request.user, request.GET.get("q", ""))
    found = found.only("id", "title", "updated_at")[:SEARCH_LIMIT]
    return JsonResponse({"conversations": [sidebar_item(item) for item in found]})


@login_required
@require_POST
def rename(request, conversation_id):
    found = owned_or_404(request, conversation_id)
    try:
        found.rename(request.POST.get("title", ""))
    except ValueError as error:
        return invalid(str(error))
    return JsonResponse({"conversation": found.as_frame()})


@login_required
@require_POST
def instructions(request, conversation_id):
    found = owned_or_404(request, conversation_id)
    try:
        found.set_instructions(request.POST.get("instructions", ""))
    except ValueError as error:
        return invalid(str(error))
    return JsonResponse({"conversation": found.as_frame()})


@login_required
@require_POST
def delete(request, conversation_id):
    found = owned_or_404(request, conversation_id)
    try:
        found.discard()
    except ConversationBusy:
        message = "An answer is still being written; stop it before deleting the conversation."
        return JsonResponse({"error": {"code": "busy", "message": message}}, status=409)
    return JsonResponse({"deleted": str(conversation_id), "next": reverse("chat:home")})


def favicon(request):
    # Resolved per request: with hashed static names the manifest exists only after collectstatic.
    return redirect(static("chat/favicon.svg"), permanent=True)
