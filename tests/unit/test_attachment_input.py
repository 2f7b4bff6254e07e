"""Attachments as Open Responses content items (`chat.content.input_content`) and the model
capability check, without a database: unsaved Attachment rows whose read() gives the bytes.

The same path from a real multipart upload is in tests/test_uploads.py.
"""

import base64
import io

import pytest
from PIL import Image

from chat import attachments, content
from chat.models import Attachment
from tests.files import image_bytes, pdf_with_text


def held(name, content_type, data):
    """An unsaved attachment whose read(), the one I/O input_content does, gives `data`."""
    kind = Attachment.Kind.IMAGE if content_type.startswith("image/") else Attachment.Kind.FILE
    attachment = Attachment(name=name, content_type=content_type, kind=kind, size=len(data))
    attachment.read = lambda: data
    return attachment


@pytest.fixture(autouse=True)
def capabilities(settings):
    settings.LOCAL_MODEL_NAME = "local-small"
    settings.CHAT_MODEL_CAPABILITIES = {"vision": ["images", "files"], "eyes-only": ["images"], "words": []}
    settings.CHAT_DEFAULT_MODEL_CAPABILITIES = ["images", "files"]


def test_an_image_becomes_an_input_image_with_a_base64_data_url():
    data = image_bytes((12, 8))
    [item] = content.input_content([held("a.png", "image/png", data)], "vision")
    assert item["type"] == "input_image" and set(item) == {"type", "image_url"}
    prefix = "data:image/png;base64,"
    assert item["image_url"].startswith(prefix)
    decoded = base64.b64decode(item["image_url"][len(prefix) :], validate=True)
    assert decoded == data
    with Image.open(io.BytesIO(decoded)) as image:
        assert image.size == (12, 8)


def test_a_pdf_is_a_file_and_its_text_for_a_model_that_takes_files():
    data = pdf_with_text("The Danube flows east.")
    items = content.input_content([held("river.pdf", "application/pdf", data)], "vision")
    assert [item["type"] for item in items] == ["input_file", "input_text"]
    assert items[0]["filename"] == "river.pdf"
    assert items[0]["file_data"] == "data:application/pdf;base64," + base64.b64encode(data).decode()
    assert items[1]["text"].startswith("Text of the attached PDF river.pdf:")
    assert "The Danube flows east." in items[1]["text"]


@pytest.mark.parametrize("model", ["eyes-only", "words", "local-small"])
def test_a_model_without_files_gets_a_pdfs_text_alone(model):
    items = content.input_content([held("river.pdf", "application/pdf", pdf_with_text("Salt."))], model)
    assert [item["type"] for item in items] == ["input_text"]
    assert "Salt." in items[0]["text"]


def test_a_pdf_without_readable_text_says_so():
    items = content.input_content([held("scan.pdf", "application/pdf", b"%PDF-1.4 not really")], "words")
    assert items == [
        {"type": "input_text", "text": "Text of the attached PDF scan.pdf:\n\n(no text could be read from this PDF)"}
    ]


def test_a_text_file_is_input_text_naming_the_file():
    items = content.input_content([held("main.py", "text/plain", "print('héllo')\n".encode())], "local-small")
    assert items == [{"type": "input_text", "text": "Attached file main.py:\n\nprint('héllo')\n"}]


def test_a_very_long_text_is_cut_and_says_so(monkeypatch):
    monkeypatch.setattr(content, "MAX_TEXT_CHARS", 10)
    [item] = content.input_content([held("long.txt", "text/plain", b"x" * 25)], "words")
    assert item["text"] == "Attached file long.txt:\n\n" + "x" * 10 + "\n[… cut: the first 10 characters of 25]"


def test_items_keep_the_attachments_order():
    mixed = [
        held("b.txt", "text/plain", b"second"),
        held("a.png", "image/png", image_bytes()),
        held("c.txt", "text/plain", b"third"),
    ]
    items = content.input_content(mixed, "vision")
    assert [item["type"] for item in items] == ["input_text", "input_image", "input_text"]
    assert items[0]["text"].endswith("second") and items[2]["text"].endswith("third")


@pytest.mark.parametrize("model", ["words", "local-small"])
def test_a_model_that_cannot_read_images_refuses_them_with_a_sentence_naming_it(model):
    photo = held("photo.png", "image/png", image_bytes())
    with pytest.raises(content.ModelCannotRead) as refused:
        content.check_model_takes(model, [held("a.txt", "text/plain", b"a"), photo])
    assert str(refused.value) == f"The model {model} cannot read images; remove photo.png or choose another model."
    assert refused.value.code == "unsupported_attachment"


def test_the_local_model_is_text_only_whatever_the_setting_says(settings):
    settings.CHAT_MODEL_CAPABILITIES = {"local-small": ["images", "files"]}
    assert content.capabilities_of("local-small") == frozenset()


@pytest.mark.parametrize("model", ["vision", "eyes-only", "unlisted-remote"])
def test_models_that_take_images_accept_every_kind(model):
    everything = [
        held("a.png", "image/png", image_bytes()),
        held("b.pdf", "application/pdf", pdf_with_text()),
        held("c.txt", "text/plain", b"c"),
    ]
    content.check_model_takes(model, everything)


def test_text_and_pdfs_are_accepted_by_a_text_only_model():
    content.check_model_takes(
        "words", [held("b.pdf", "application/pdf", pdf_with_text()), held("c.txt", "text/plain", b"c")]
    )


def test_unlisted_models_take_the_default_capabilities(settings):
    settings.CHAT_DEFAULT_MODEL_CAPABILITIES = []
    with pytest.raises(content.ModelCannotRead, match="unlisted"):
        content.check_model_takes("unlisted", [held("a.png", "image/png", image_bytes())])


@pytest.mark.parametrize(
    "given, kept",
    [
        ("../../etc/passwd", "passwd"),
        ("C:\\Users\\me\\report.pdf", "report.pdf"),
        ("line\nbreak\x00.txt", "linebreak.txt"),
        ("   ", "file"),
        ("", "file"),
        ("a" * 300 + ".txt", "a" * 196 + ".txt"),
    ],
)
def test_uploaders_names_lose_folders_and_control_characters(given, kept):
    assert attachments.clean_name(given) == kept
