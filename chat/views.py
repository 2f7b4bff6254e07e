import json

from django.conf import settings
from django.contrib.auth.decorators import login_required
from django.http import Http404, JsonResponse
from django.shortcuts import redirect, render
from django.templatetags.static import static
from django.urls import reverse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from chat import limits, providers
from chat.models import (
    SHARE_LINKS_PER_CONVERSATION,
    Conversation,
    ConversationBusy,
    Message,
    SharedConversation,
    TooManyShareLinks,
)


def page_context(request, conversation=None):
    conversations = Conversation.objects.owned_by(request.user).only("id", "title", "updated_at")
    # The path last shown or added to; the other versions are a chat.select away.
    messages = [message.as_frame() for message in conversation.path()] if conversation else []
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
            "sharing": settings.CHAT_SHARING,
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


# --- Shared links ----------------------------------------------------------------------------


def sharing_on():
    """Every share view asks first: with CHAT_SHARING=0 the feature does not exist (404)."""
    if not settings.CHAT_SHARING:
        raise Http404("Sharing is switched off.")


def share_item(request, link):
    return {
        "token": link.token,
        "url": request.build_absolute_uri(reverse("chat:shared", args=[link.token])),
        "created_at": link.created_at.isoformat(),
        "messages": len(link.messages),
    }


def share_list(request, conversation):
    links = conversation.shared_links.live()
    return [share_item(request, link) for link in links]


@login_required
@require_http_methods(["GET", "POST"])
def share(request, conversation_id):
    """GET: the conversation's live links. POST: a new link to its current path, as it is now."""
    sharing_on()
    found = owned_or_404(request, conversation_id)
    if request.method == "GET":
        return JsonResponse({"links": share_list(request, found)})
    try:
        link = SharedConversation.objects.share(found)
    except ConversationBusy:
        message = "An answer is still being written; share the conversation once it has finished."
        return JsonResponse({"error": {"code": "busy", "message": message}}, status=409)
    except TooManyShareLinks:
        return invalid(f"A conversation can have at most {SHARE_LINKS_PER_CONVERSATION} links; revoke one first.")
    item = share_item(request, link)
    return JsonResponse({"url": item["url"], "link": item, "links": share_list(request, found)})


@login_required
@require_POST
def share_revoke(request, conversation_id):
    """Revoke one link (`token`) or every link (`all=1`) of the conversation."""
    sharing_on()
    found = owned_or_404(request, conversation_id)
    links = found.shared_links.live()
    if request.POST.get("all") == "1":
        revoked = links.revoke()
    elif request.POST.get("token"):
        revoked = links.filter(token=request.POST["token"]).revoke()
        if not revoked:
            raise Http404("No such link.")
    else:
        return invalid("Say which link to revoke: a token, or all=1.")
    return JsonResponse({"revoked": revoked, "links": share_list(request, found)})


def opened_or_404(token):
    sharing_on()
    try:
        return SharedConversation.objects.opened(token)
    except SharedConversation.DoesNotExist:
        raise Http404("No such shared conversation.") from None


# Never kept by a browser or a proxy: a revoked link must stop showing at once.
@never_cache
@require_GET
def shared(request, token):
    """The read-only page of a shared link; no login needed."""
    link = opened_or_404(token)
    response = render(
        request,
        "chat/shared.html",
        {
            "link": link,
            "page_data": {
                "title": link.title,
                "messages": link.as_frames(),
                "image_hosts": settings.CHAT_IMAGE_HOSTS,
            },
        },
    )
    response["X-Robots-Tag"] = "noindex"
    return response


@login_required
@require_POST
def shared_continue(request, token):
    """Copy the snapshot into a new conversation of the visitor's, and open it."""
    link = opened_or_404(token)
    conversation = link.continue_as(request.user)
    return redirect("chat:conversation", conversation.id)


# --- Feedback --------------------------------------------------------------------------------


@login_required
@require_POST
def feedback(request, message_id):
    """Rate a finished answer of one's own: JSON `{rating: "good"|"bad"|null, comment?}`."""
    try:
        found = Message.objects.owned_by(request.user).get(pk=message_id)
    except Message.DoesNotExist:
        raise Http404("No such message.") from None
    try:
        body = json.loads(request.body)
    except (ValueError, UnicodeDecodeError):
        return invalid("The body must be JSON.")
    if not isinstance(body, dict):
        return invalid("The body must be a JSON object.")
    try:
        stored = found.give_feedback(body.get("rating"), body.get("comment") or "")
    except ValueError as error:
        return invalid(str(error))
    return JsonResponse({"feedback": stored})
