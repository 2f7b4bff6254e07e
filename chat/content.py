"""What the upstream is sent of a message's attachments, and which model takes what.

`input_content` turns attachments into Open Responses content items, and `check_model_takes`
refuses, before anything is stored or sent, attachments a model cannot read. Below the models
(docs/architecture.md): it works on anything with an attachment's attributes and `read()`.
"""

import base64
import io
import logging
import time

import pypdf
from django.conf import settings
from django.core.cache import cache

logger = logging.getLogger(__name__)

PDF_TYPE = "application/pdf"
# Characters of an attachment's text sent upstream at most (a PDF's extracted text, a text file).
MAX_TEXT_CHARS = 200_000
# The bounds on reading a PDF's text (see pdf_text): a dense page of real text is a few thousand
# tokens of its content stream, and a document past these pages is more than MAX_TEXT_CHARS.
PDF_MAX_PAGES = 300
PDF_PARSING_WORK = 50_000
PDF_TEXT_SECONDS = 15
# Pages in a PDF's page tree at most: listing them costs more than linear time in pypdf (ten
# thousand take seconds); a longer document gives no text.
PDF_MAX_PAGE_TREE = 10_000
# A PDF's text is read once a day at most: an upload never changes, and a conversation sends its
# files again with every answer.
PDF_TEXT_CACHE_SECONDS = 24 * 3600

# Capabilities a model may have (CHAT_MODEL_CAPABILITIES).
IMAGES = "images"
FILES = "files"


class ModelCannotRead(Exception):
    """A model offered attachments it cannot take; the text names the model."""

    code = "unsupported_attachment"


class AttachmentUnreadable(Exception):
    """A stored file that could not be read back (a store that failed); the answer fails with it."""

    code = "attachment_unreadable"


def capabilities_of(model):
    """What `model` takes besides text: a set of IMAGES and FILES (CHAT_MODEL_CAPABILITIES)."""
    if model == settings.LOCAL_MODEL_NAME:
        return frozenset()
    listed = settings.CHAT_MODEL_CAPABILITIES
    return frozenset(listed[model] if model in listed else settings.CHAT_DEFAULT_MODEL_CAPABILITIES)


def check_model_takes(model, attachments):
    """Raise ModelCannotRead when `model` cannot take one of `attachments`.

    Only images can be refused: a PDF reaches a model without FILES as its extracted text, and a
    text file is text for every model.
    """
    images = [attachment for attachment in attachments if attachment.is_image]
    if images and IMAGES not in capabilities_of(model):
        raise ModelCannotRead(f"The model {model} cannot read images; remove {images[0].name} or choose another model.")


def data_url(content_type, data):
    return f"data:{content_type};base64,{base64.b64encode(data).decode('ascii')}"


def pdf_text(data):
    """The text of a PDF's pages, or '' when it has none that can be read (scans, encryption).

    Read for every answer whose input carries the PDF, on the answer's thread: the work is
    bounded whatever the file holds. A few kilobytes of PDF can make millions of characters (one
    compressed content stream, shown on every page) and minutes of parsing; so reading stops once
    MAX_TEXT_CHARS are read, after PDF_MAX_PAGES pages or PDF_TEXT_SECONDS, each content stream is
    parsed for at most PDF_PARSING_WORK tokens (a page over it is left out), and what was left
    unread is said in the text.
    """
    texts, notes = [], []
    try:
        with pypdf.apply_configuration(
            stream_parsing_work_maximum_count=PDF_PARSING_WORK, page_tree_maximum_entries=PDF_MAX_PAGE_TREE
        ):
            pages = pypdf.PdfReader(io.BytesIO(data)).pages
            deadline = time.monotonic() + PDF_TEXT_SECONDS
            for number, page in enumerate(pages, start=1):
                if number > PDF_MAX_PAGES or sum(map(len, texts)) > MAX_TEXT_CHARS or time.monotonic() > deadline:
                    notes.append(f"[… the text of the first {number - 1} pages of {len(pages)}]")
                    break
                text = page_text(page, number)
                if text is None:
                    notes.append(f"[page {number} left out: too complex to read]")
                elif text.strip():
                    texts.append(text.strip())
    except Exception as error:
        # pypdf raises many kinds on malformed or encrypted files; any of them means no text.
        logger.info("No text read from a PDF attachment: %s", type(error).__name__)
        return ""
    # What was left out comes first: the text after it may be cut at MAX_TEXT_CHARS.
    return "\n\n".join(notes + texts) if texts else ""


def cached_pdf_text(attachment_id, data):
    """pdf_text of the stored PDF `attachment_id`, whose bytes are `data`, read once a day at most
    (through the site's cache: shared by the processes when scaled out)."""
    if attachment_id is None:  # not stored (a unit's stand-in): nothing names it to cache by
        return pdf_text(data)
    key = f"chat:pdf-text:{attachment_id}"
    text = cache.get(key)
    if text is None:
        text = pdf_text(data)
        cache.set(key, text, PDF_TEXT_CACHE_SECONDS)
    return text


def page_text(page, number):
    """The text of one page, or None when its content is over the parsing budget."""
    try:
        return page.extract_text() or ""
    except pypdf.errors.LimitReachedError:
        logger.info("Page %s of a PDF attachment is over the parsing budget; left out", number)
        return None


def clipped(text):
    if len(text) <= MAX_TEXT_CHARS:
        return text
    return text[:MAX_TEXT_CHARS] + f"\n[… cut: the first {MAX_TEXT_CHARS} characters of {len(text)}]"


def least_input_content(attachments, model):
    """What `input_content` makes of `attachments` for `model` at its smallest, reading no file:
    the parts that are not text (an image, a PDF for a model that takes files) whatever their
    bytes; the text of a PDF or a text file is not known until read, and counts as none. Fitting
    an input with these first (AnswerInput.fitted) leaves out, unread, the files of the
    turns that cannot be sent whatever those files hold."""
    takes = capabilities_of(model)
    return [
        {"type": "input_image"} if attachment.is_image else {"type": "input_file"}
        for attachment in attachments
        if attachment.is_image or (attachment.content_type == PDF_TYPE and FILES in takes)
    ]


def input_content(attachments, model):
    """Open Responses content items for `attachments` sent to `model`, in their order.

    Images: `input_image` with a base64 data URL. PDFs: `input_file` (filename, file_data as a
    base64 data URL) for a model that takes files, and always their extracted text as
    `input_text`, so a text-only model can read them. Text files: `input_text` naming the file.
    Reads only the stored files; call check_model_takes first.
    """
    takes = capabilities_of(model)
    items = []
    for attachment in attachments:
        try:
            data = attachment.read()
        except Exception as error:
            # The store's own kinds of failure (OSError, a remote store's client errors): the
            # answer fails saying which file, and the log says why.
            logger.warning("Attachment %s could not be read for an answer", attachment.pk, exc_info=True)
            raise AttachmentUnreadable(
                f"The attached file {attachment.name} could not be read from storage; try again later."
            ) from error
        if attachment.is_image:
            items.append({"type": "input_image", "image_url": data_url(attachment.content_type, data)})
        elif attachment.content_type == PDF_TYPE:
            if FILES in takes:
                items.append({"type": "input_file", "filename": attachment.name, "file_data": data_url(PDF_TYPE, data)})
            text = cached_pdf_text(attachment.pk, data)
            body = clipped(text) if text else "(no text could be read from this PDF)"
            items.append({"type": "input_text", "text": f"Text of the attached PDF {attachment.name}:\n\n{body}"})
        else:
            text = data.decode("utf-8", errors="replace")
            items.append({"type": "input_text", "text": f"Attached file {attachment.name}:\n\n{clipped(text)}"})
    return items
