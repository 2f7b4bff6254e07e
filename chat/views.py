from django.conf import settings
from django.contrib.auth.decorators import login_required
from django.http import Http404
from django.shortcuts import render

from chat import limits, providers
from chat.models import Conversation


def page_context(request, conversation=None):
    conversations = Conversation.objects.owned_by(request.user).only("id", "title", "updated_at")
    messages = [message.as_frame() for message in conversation.messages.all()] if conversation else []
    offered = providers.providers()
    return {
        "budget": limits.budget_status(request.user),
        "conversations": conversations,
        "conversation": conversation,
        "page_data": {
            "conversation": conversation.as_frame() if conversation else None,
            "messages": messages,
            "models": [provider.model for provider in offered],
            "model_labels": {provider.model: provider.label for provider in offered},
            "max_message_chars": settings.CHAT_MAX_MESSAGE_CHARS,
            "image_hosts": settings.CHAT_IMAGE_HOSTS,
        },
    }


@login_required
def home(request):
    return render(request, "chat/chat.html", page_context(request))


@login_required
def conversation(request, conversation_id):
    try:
        found = Conversation.objects.owned_by(request.user).get(pk=conversation_id)
    except Conversation.DoesNotExist:
        raise Http404("No such conversation.") from None
    return render(request, "chat/chat.html", page_context(request, found))
