import dataclasses
import json
import logging

from django.conf import settings
from django.contrib.auth.decorators import login_required
from django.core.files.uploadhandler import FileUploadHandler, StopUpload
from django.http import Http404, HttpResponse, JsonResponse
from django.shortcuts import redirect, render
from django.templatetags.static import static
from django.urls import reverse
from django.utils import timezone
from django.views.decorators.cache import never_cache
from django.views.decorators.csrf import csrf_exempt, csrf_protect
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from chat import importers, limits, providers, transcripts
from chat.models import (
    SHARE_LINKS_PER_CONVERSATION,
    AccountSettings,
    Conversation,
    ConversationBusy,
    Message,
    SharedConversation,
    TooManyShareLinks,
)
from chat.runtime import current

logger = logging.getLogger(__name__)


def page_context(request, conversation=None):
    mine = Conversation.objects.owned_by(request.user).only("id", "title", "updated_at", "pinned_at", "archived_at")
    # The path last shown or added to; the other versions are a chat.select away.
    messages = page_frames(conversation) if conversation else []
    offered = providers.providers()
    budget = limits.budget_status(request.user)
    preferences = AccountSettings.of(request.user)
    return {
        "budget": budget,
        "conversations": mine.in_sidebar(),
        "archived": mine.archived(),
        "conversation": conversation,
        "new_chat_instructions": preferences.default_instructions,
        "page_data": {
            "conversation": conversation.as_frame() if conversation else None,
            "messages": messages,
            "models": [provider.model for provider in offered],
            "model_labels": {provider.model: provider.label for provider in offered},
            "max_message_chars": settings.CHAT_MAX_MESSAGE_CHARS,
            "image_hosts": settings.CHAT_IMAGE_HOSTS,
            "budget": budget,
            "sharing": settings.CHAT_SHARING,
            # What a new chat starts with (the settings page).
            "default_model": preferences.model_for_new_chats,
            "default_instructions": preferences.default_instructions,
        },
    }


def page_frames(conversation):
    """The current path's messages as the page starts with them. An answer still being written
    shows the freshest text there is, its snapshot (with its `seq`), rather than the last
    checkpoint, which can be a second older: a reload mid-answer then never shows less than the
    tab showed before it."""
    frames = conversation.path_frames()
    for frame in frames:
        if frame["status"] in Message.UNFINISHED:
            snapshot = current().read_snapshot(frame["id"])
            if snapshot is not None:
                frame.update(dataclasses.asdict(snapshot))
    return frames


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


def invalid(message):
    return JsonResponse({"error": {"code": "invalid", "message": message}}, status=400)


@login_required
@require_GET
def search(request):
    query = request.GET.get("q", "")
    found = Conversation.objects.search(request.user, query)
    found = list(found.only("id", "title", "updated_at", "pinned_at", "archived_at")[:SEARCH_LIMIT])
    # Where the words matched, shown under each result (a conversation found by its title has none).
    snippets = Conversation.objects.search_snippets([item.id for item in found], query)
    items = [{**item.sidebar_item(), "snippet": snippets.get(item.id)} for item in found]
    return JsonResponse({"conversations": items})


def change_conversation(request, conversation_id, change):
    """Rename and instructions: the owner's conversation changed by one model method, which
    raises ValueError with the sentence to show; the answer is the conversation as it now is."""
    found = owned_or_404(request, conversation_id)
    try:
        change(found)
    except ValueError as error:
        return invalid(str(error))
    return JsonResponse({"conversation": found.as_frame()})


@login_required
@require_POST
def rename(request, conversation_id):
    title = request.POST.get("title", "")
    return change_conversation(request, conversation_id, lambda found: found.rename(title))


@login_required
@require_POST
def instructions(request, conversation_id):
    text = request.POST.get("instructions", "")
    return change_conversation(request, conversation_id, lambda found: found.set_instructions(text))


@login_required
@require_GET
def budget(request):
    """Today's usage against the budget: a tab asks when it is shown again or a send was refused,
    since answers in its other conversations (and other tabs) spend the same budget unheard."""
    return JsonResponse({"budget": limits.budget_status(request.user)})


@login_required
@require_POST
def start(request):
    """A new chat given its instructions before its first message: the conversation is made now,
    empty, so that the first answer follows them (the first message is sent to it next)."""
    try:
        found = Conversation.objects.start_empty(
            request.user,
            instructions=request.POST.get("instructions", ""),
            model=request.POST.get("model") or None,
            first_message=request.POST.get("first_message", ""),
        )
    except ValueError as error:
        return invalid(str(error))
    return JsonResponse({"conversation": found.as_frame()}, status=201)


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


def flag(request, name):
    """A boolean form field: "1"/"true" or "0"/"false"; anything else is None."""
    return {"1": True, "true": True, "0": False, "false": False}.get(request.POST.get(name, "1").lower())


def organise(request, conversation_id, field, change):
    """Pin or archive (or undo it): the owner's conversation, a true/false `field`, the model's verb."""
    found = owned_or_404(request, conversation_id)
    value = flag(request, field)
    if value is None:
        return invalid(f"`{field}` must be true or false.")
    change(found, value)
    return JsonResponse({"conversation": found.sidebar_item()})


@login_required
@require_POST
def pin(request, conversation_id):
    return organise(request, conversation_id, "pinned", Conversation.pin)


@login_required
@require_POST
def archive(request, conversation_id):
    return organise(request, conversation_id, "archived", Conversation.archive)


def attachment(text, content_type, filename):
    response = HttpResponse(text, content_type=f"{content_type}; charset=utf-8")
    response["Content-Disposition"] = f'attachment; filename="{filename}"'
    return response


@login_required
@require_GET
def export_all(request):
    """All of the user's conversations as one JSON file, in the admin export's schema
    (docs/export.schema.json); /import/ reads it back."""
    text, _ = transcripts.export(Conversation.objects.owned_by(request.user).order_by("created_at"), "json")
    stamp = timezone.now().strftime("%Y%m%d-%H%M%S")
    return attachment(text, "application/json", f"chats-{stamp}.json")


@login_required
@require_GET
def export_markdown(request, conversation_id):
    found = owned_or_404(request, conversation_id)
    text, _ = transcripts.export(Conversation.objects.filter(pk=found.pk), "markdown")
    return attachment(text, "text/markdown", f"conversation-{found.pk}.md")


class LimitedUpload(FileUploadHandler):
    """Stops reading an upload once it passes `limit` bytes; the view then refuses it. Placed
    before Django's own handlers, which keep what it lets through."""

    def __init__(self, request, limit):
        super().__init__(request)
        self.limit = limit
        self.exceeded = False

    def receive_data_chunk(self, raw_data, start):
        if start + len(raw_data) > self.limit:
            self.exceeded = True
            raise StopUpload(connection_reset=False)
        return raw_data

    def file_complete(self, file_size):
        return None


def import_error(code, message, status=400):
    return JsonResponse({"error": {"code": code, "message": message}}, status=status)


def too_large():
    limit = settings.CHAT_MAX_IMPORT_BYTES
    size = f"{limit / (1024 * 1024):g} MB" if limit >= 1024 * 1024 else f"{limit} bytes"
    return import_error("too_large", f"The file is larger than the {size} an import may be.", 413)


# Room for the multipart wrapping around the file (boundaries, headers, the CSRF field).
MULTIPART_SLACK = 64 * 1024


@csrf_exempt  # the CSRF check is made by import_upload, after the upload's limit is in place
@login_required
@require_POST
def import_chats(request):
    """POST /import/ with a file in `file`: our export, ChatGPT's or Open WebUI's (chat/importers.py)."""
    try:
        length = int(request.META.get("CONTENT_LENGTH") or 0)
    except ValueError:
        length = 0
    if length > settings.CHAT_MAX_IMPORT_BYTES + MULTIPART_SLACK:
        return too_large()  # said before the body is parsed
    # Upload handlers can only change before the body is read, and the CSRF check reads it.
    limit = LimitedUpload(request, settings.CHAT_MAX_IMPORT_BYTES)
    request.upload_handlers.insert(0, limit)
    return import_upload(request, limit)


@csrf_protect
def import_upload(request, limit):
    upload = request.FILES.get("file")
    if limit.exceeded:
        return too_large()
    if upload is None:
        return import_error("no_file", "Choose a file to import (the form field `file`).")
    try:
        result = importers.import_file(request.user, upload.read())
    except importers.ImportRefused as refusal:
        return import_error(refusal.code, refusal.message, 409 if refusal.code == "conflict" else 400)
    logger.info("User %s imported %s conversations", request.user.pk, len(result.conversations))
    return JsonResponse(
        {
            "imported": len(result.conversations),
            "skipped": result.skipped,
            "conversations": [conversation.sidebar_item() for conversation in result.conversations],
        }
    )


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
