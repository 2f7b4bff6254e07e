"""A PDF's text is read for every answer that carries it, on the answer's thread: a hostile PDF (a
few kilobytes that make millions of characters, pages too complex to parse) costs a bounded
amount of reading, and says what it left out.

Through the real path: an upload over HTTP, a chat.send over the websocket, the worker, and the
loopback upstream, whose request bodies show what the model was sent.
"""

import pytest
from channels.db import database_sync_to_async
from django.core.cache import cache

from chat import content
from tests.files import compressed_pdf, text_operators
from tests.test_attachments import Person, exchange, last_content
from tests.websocket import assert_no_groups_left

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.asyncio, pytest.mark.timeout(120)]

# About 45,000 characters of text a page, from one 100 kB stream shared by every page: the file
# is 30 kB, its text would be nine million characters, and reading it all took two minutes.
DENSE = text_operators("Hello world again and again", 1700)


@pytest.fixture
def text_only(settings):
    settings.CHAT_MODEL_CAPABILITIES = {"test-model": []}
    return settings


person_of = database_sync_to_async(Person)


async def sent_text(person, upstream, data, name="book.pdf"):
    """What the upstream was sent of the PDF `data` attached to a new message."""
    uploaded = await person.upload(name, data)
    socket = await person.socket()
    frame = {"type": "chat.send", "conversation": None, "text": "Summarise", "attachments": [uploaded["id"]]}
    (_, _), done = await exchange(socket, frame, upstream)
    assert done["status"] == "completed", done
    await socket.disconnect()
    [text] = [part["text"] for part in last_content(upstream.requests[-1]) if "PDF" in part.get("text", "")]
    return uploaded, done, text


async def test_a_small_pdf_that_makes_a_huge_text_is_read_only_as_far_as_is_sent(alice, upstream, worker, text_only):
    data = compressed_pdf([DENSE] * 200)
    assert len(data) < 40_000
    uploaded, _, text = await sent_text(await person_of(alice), upstream, data)
    # Reading stopped once more than the characters sent were read, and says so.
    assert "[… the text of the first 5 pages of 200]" in text
    assert text.count("Hello world again and again") * len("Hello world again and again") < 2 * content.MAX_TEXT_CHARS
    assert f"[… cut: the first {content.MAX_TEXT_CHARS} characters of" in text
    # Read once: the next answer of the conversation is sent the same text from the cache.
    assert cache.get(f"chat:pdf-text:{uploaded['id']}") is not None
    assert_no_groups_left()


async def test_a_page_too_complex_to_parse_is_left_out_and_the_others_are_read(alice, upstream, worker, text_only):
    """One page whose stream holds a million tokens (a few kilobytes compressed) between two
    ordinary pages; and a document of thousands of short pages, read to the page limit."""
    person = await person_of(alice)
    huge = text_operators("x", 200_000)
    _, _, text = await sent_text(person, upstream, compressed_pdf([b"BT /F1 12 Tf 72 712 Td (First) Tj ET", huge] * 2))
    assert text == (
        "Text of the attached PDF book.pdf:\n\n[page 2 left out: too complex to read]\n\n"
        "[page 4 left out: too complex to read]\n\nFirst\n\nFirst"
    )

    many = [text_operators(f"Page {number}", 1) for number in range(content.PDF_MAX_PAGES + 200)]
    _, _, text = await sent_text(person, upstream, compressed_pdf(many), name="pages.pdf")
    assert f"Page {content.PDF_MAX_PAGES - 1}" in text and f"Page {content.PDF_MAX_PAGES}\n" not in text
    assert f"[… the text of the first {content.PDF_MAX_PAGES} pages of {len(many)}]" in text
    assert_no_groups_left()
