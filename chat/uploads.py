"""The upload endpoints: POST /uploads/, GET and DELETE /uploads/<id>/ (docs/protocol.md).

Uploads go over HTTP, not the websocket: a multipart body streams through Django's upload
handlers to a temporary file, where a frame would have to sit whole in memory.
"""

import logging

from django.conf import settings
from django.contrib.auth.decorators import login_required
from django.core.files.uploadhandler import FileUploadHandler, StopUpload, TemporaryFileUploadHandler
from django.http import Http404, JsonResponse
from django.views.decorators.csrf import csrf_exempt, csrf_protect
from django.views.decorators.http import require_http_methods, require_POST

from chat import attachments
from chat.models import Attachment, UploadRefused, UploadSent

logger = logging.getLogger(__name__)

# Room for the multipart boundaries and part headers around the file itself.
MULTIPART_OVERHEAD = 64 * 1024


def refused(code, status, message):
    return JsonResponse({"error": {"code": code, "message": message}}, status=status)


def too_large():
    limit = settings.CHAT_MAX_UPLOAD_BYTES
    return refused("too_large", 413, f"The file is larger than the limit of {limit} bytes.")


class SizeLimitHandler(FileUploadHandler):
    """Stops reading an upload once its file passes CHAT_MAX_UPLOAD_BYTES, and says so on the request.

    First in the chain, it sees every chunk before a handler keeps it, so no more than the limit
    of any file is ever written (Django's parser then discards the rest of the body).
    """

    def __init__(self, request=None):
        super().__init__(request)
        self.received = 0

    def new_file(self, *args, **kwargs):
        super().new_file(*args, **kwargs)
        self.received = 0

    def receive_data_chunk(self, raw_data, start):
        self.received += len(raw_data)
        if self.received > settings.CHAT_MAX_UPLOAD_BYTES:
            self.request.upload_too_large = True
            raise StopUpload(connection_reset=False)
        return raw_data

    def file_complete(self, file_size):
        return None


@login_required
@csrf_exempt  # checked in store_upload below, once the size limit is in place (see upload)
@require_POST
def upload(request):
    """Take one file (multipart field `file`); answer its attachment or a JSON error.

    Upload handlers can only be changed before the body is read, and the CSRF check reads it
    (the token may be a form field): so the check is exempted here and done by csrf_protect on
    store_upload, after the limiting handler is in place. Django's documented pattern.
    """
    try:
        declared = int(request.META.get("CONTENT_LENGTH") or 0)
    except ValueError:
        declared = 0
    if declared > settings.CHAT_MAX_UPLOAD_BYTES + MULTIPART_OVERHEAD:
        # Refused from the header, before a byte of the body is parsed.
        return too_large()
    # Not the in-memory handler: every upload goes to a temporary file, a chunk at a time.
    request.upload_handlers = [SizeLimitHandler(request), TemporaryFileUploadHandler(request)]
    return store_upload(request)


@csrf_protect
def store_upload(request):
    request.POST  # noqa: B018  (parses the body through the handlers set in upload)
    if getattr(request, "upload_too_large", False):
        return too_large()
    files = request.FILES.getlist("file")
    if len(files) != 1:
        return refused("invalid", 400, "Send exactly one file, in the multipart field named file.")
    try:
        attachment = Attachment.objects.store(request.user, attachments.prepare(files[0]))
    except UploadRefused as error:
        return refused(error.code, error.status, str(error))
    finally:
        files[0].close()
    return JsonResponse(attachment.as_frame(), status=201)


def owned_or_404(request, attachment_id):
    """The user's attachment; another user's answers exactly like one that does not exist."""
    try:
        return Attachment.objects.owned_by(request.user).get(pk=attachment_id)
    except Attachment.DoesNotExist:
        raise Http404("No such upload.") from None


@login_required
@require_http_methods(["GET", "HEAD", "DELETE"])
def detail(request, attachment_id):
    if request.method == "DELETE":
        return discard(request, attachment_id)
    return attachments.file_response(owned_or_404(request, attachment_id))


@login_required
@require_POST
def delete(request, attachment_id):
    return discard(request, attachment_id)


def discard(request, attachment_id):
    """Delete an upload not yet sent; a sent one goes with its message or conversation."""
    try:
        Attachment.objects.discard(request.user, attachment_id)
    except Attachment.DoesNotExist:
        raise Http404("No such upload.") from None
    except UploadSent:
        return refused("sent", 409, "This file was sent with a message; delete the conversation to delete it.")
    return JsonResponse({"deleted": str(attachment_id)})
