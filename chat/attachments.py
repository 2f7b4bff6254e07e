"""What an upload is, what is stored of it, and what the upstream is sent of it.

An upload's type is decided by its content (magic numbers through `filetype`, and UTF-8 decoding
for plain text), never by its name or the browser's claim, and must be one of CHAT_UPLOAD_TYPES.
Images are decoded and re-encoded with Pillow: what is stored is only the pixels (no EXIF, so no
GPS position; no bytes hidden after the image data), scaled to CHAT_IMAGE_MAX_SIDE at most.

What the upstream is sent of them, and which model takes what, is chat/content.py.
"""

import codecs
import io
import logging
import unicodedata
from dataclasses import dataclass

import filetype
from django.conf import settings
from django.core.files.base import ContentFile
from django.db import transaction
from django.db.models.signals import post_delete
from django.dispatch import receiver
from django.http import FileResponse
from PIL import Image, ImageOps, UnidentifiedImageError

from chat.models import Attachment, MessageAttachment, UploadRefused

logger = logging.getLogger(__name__)

TEXT_TYPE = "text/plain"
# Images are stored in the format they came in, except GIF: only its first frame is kept, as PNG.
IMAGE_FORMATS = {"image/png": "PNG", "image/jpeg": "JPEG", "image/webp": "WEBP", "image/gif": "PNG"}
STORED_IMAGE_TYPES = {"PNG": "image/png", "JPEG": "image/jpeg", "WEBP": "image/webp"}
# Decoding an image costs memory by its pixels, not its bytes: a few kilobytes of PNG can claim a
# gigapixel. Refused before decoding, from the header's size.
MAX_IMAGE_PIXELS = 50_000_000
# Served with every stored file: nothing in it may run, whatever a browser makes of it.
SANDBOX_POLICY = "default-src 'none'; sandbox"
# Bytes filetype looks at: every signature it knows sits in the first few kilobytes.
SNIFF_BYTES = 8192


@dataclass
class Prepared:
    """An upload checked and made ready to store: the bytes to keep and what they are."""

    name: str
    content: object  # a django File
    content_type: str
    kind: str
    width: int | None = None
    height: int | None = None


def clean_name(name):
    """The uploader's file name without any folder part or control characters, never empty."""
    name = (name or "").replace("\\", "/").rsplit("/", 1)[-1]
    name = "".join(character for character in name if unicodedata.category(character)[0] != "C").strip()
    if len(name) > Attachment.NAME_LENGTH:
        stem, dot, extension = name.rpartition(".")
        keep = Attachment.NAME_LENGTH - len(extension) - 1
        name = f"{stem[:keep]}.{extension}" if dot and 0 < len(extension) < 16 else name[: Attachment.NAME_LENGTH]
    return name or "file"


def unsupported(sentence):
    return UploadRefused("unsupported_type", 415, sentence)


def sniff(uploaded, name):
    """The content type of `uploaded`, decided by its bytes; raises UploadRefused (415)."""
    uploaded.seek(0)
    head = uploaded.read(SNIFF_BYTES)
    uploaded.seek(0)
    if not head:
        raise UploadRefused("invalid", 400, "The file is empty.")
    found = filetype.guess(head)
    if found is not None:
        content_type = found.mime
    elif is_text(uploaded, name):
        content_type = TEXT_TYPE
    else:
        content_type = None
    if content_type not in settings.CHAT_UPLOAD_TYPES:
        allowed = ", ".join(settings.CHAT_UPLOAD_TYPES)
        raise unsupported(f"This kind of file cannot be attached; the kinds accepted are {allowed}.")
    return content_type


def is_text(uploaded, name):
    """Plain text: a name with one of CHAT_TEXT_UPLOAD_EXTENSIONS and valid UTF-8 throughout."""
    extension = name.rpartition(".")[2].lower() if "." in name else ""
    if extension not in settings.CHAT_TEXT_UPLOAD_EXTENSIONS:
        return False
    decoder = codecs.getincrementaldecoder("utf-8")()
    try:
        for chunk in uploaded.chunks():
            if b"\x00" in chunk:
                return False
            decoder.decode(chunk)
        decoder.decode(b"", final=True)
    except UnicodeDecodeError:
        return False
    finally:
        uploaded.seek(0)
    return True


def reencode_image(uploaded, content_type):
    """(bytes, stored content type, width, height) of the image's pixels alone, scaled down."""
    max_side = settings.CHAT_IMAGE_MAX_SIDE
    try:
        with Image.open(uploaded) as image:
            if image.width * image.height > MAX_IMAGE_PIXELS:
                raise UploadRefused(
                    "too_large", 413, f"The image has more than {MAX_IMAGE_PIXELS} pixels; scale it down first."
                )
            # JPEG can decode straight at a smaller scale: far less memory for a large photo.
            image.draft("RGB", (max_side, max_side))
            image.load()
            # The orientation lives in the EXIF about to be dropped: turn the pixels instead.
            image = ImageOps.exif_transpose(image)
            image.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
            target = IMAGE_FORMATS[content_type]
            if target == "JPEG" and image.mode not in ("RGB", "L"):
                image = image.convert("RGB")
            elif target in ("PNG", "WEBP") and image.mode not in ("RGB", "RGBA", "L", "LA", "P"):
                image = image.convert("RGBA")
            output = io.BytesIO()
            # No exif=, icc_profile= or pnginfo=: nothing but the pixels is written.
            options = {"quality": 90} if target in ("JPEG", "WEBP") else {"optimize": True}
            image.save(output, target, **options)
            return output.getvalue(), STORED_IMAGE_TYPES[target], image.width, image.height
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError, SyntaxError) as error:
        # The signature said image, the decoder disagrees: a broken or forged file.
        logger.info("An upload with an image signature did not decode: %s", type(error).__name__)
        raise UploadRefused("invalid", 400, "The image could not be read; it may be damaged.") from None


def prepare(uploaded):
    """Check an upload (a django UploadedFile) and make what is stored of it; raises UploadRefused."""
    name = clean_name(uploaded.name)
    content_type = sniff(uploaded, name)
    if content_type in IMAGE_FORMATS:
        data, stored_type, width, height = reencode_image(uploaded, content_type)
        if stored_type != content_type:
            name = f"{name.rpartition('.')[0] or name}.png"
        return Prepared(name, ContentFile(data), stored_type, Attachment.Kind.IMAGE, width, height)
    uploaded.seek(0)
    return Prepared(name, uploaded, content_type, Attachment.Kind.FILE)


def file_response(attachment):
    """The stored file as every door serves it (its owner's /uploads/<id>/, staff's audited
    transcript): read through the storage API, and never run by a browser."""
    response = FileResponse(
        attachment.file.open("rb"),
        content_type=attachment.content_type,
        # Only re-encoded images show in the page; anything else could be HTML, SVG or XML that a
        # browser would run, so it downloads.
        as_attachment=not attachment.is_image,
        filename=attachment.name,
    )
    response["X-Content-Type-Options"] = "nosniff"
    response["Content-Security-Policy"] = SANDBOX_POLICY  # the site's middleware keeps a set header
    response["Cross-Origin-Resource-Policy"] = "same-origin"
    response["Cache-Control"] = "private, no-store"
    return response


@receiver(post_delete, sender=Attachment)
def delete_stored_file(sender, instance, **kwargs):
    """The stored file goes once the row's deletion commits (a rolled-back deletion keeps both).

    Every way a row goes passes here: its own deletion, its message's or conversation's or
    owner's cascade, a queryset's delete(), the sweep. Robust: a store that fails to delete
    must not undo the deletion; the failure is logged.
    """
    storage, name = instance.file.storage, instance.file.name
    if not name:
        return

    def delete():
        try:
            storage.delete(name)
        except Exception:
            logger.exception("Could not delete the stored file of attachment %s", instance.pk)

    transaction.on_commit(delete, robust=True)


@receiver(post_delete, sender=MessageAttachment)
def delete_unused_attachment(sender, instance, **kwargs):
    """An attachment goes with the last message that used it: a conversation's deletion (its
    messages' cascade) takes its files, while one an edited version still shares stays. In the
    deleting transaction, so that a rolled-back deletion keeps it."""
    Attachment.objects.delete_unused([instance.attachment_id])
