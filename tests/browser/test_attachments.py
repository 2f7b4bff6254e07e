"""Attachments in real Chromium: the Attach files button, pasting and dropping files, the chips in
the composer (thumbnail, size, progress, error, Remove), Send waiting for uploads, the files in the
sent message and after a reload, editing a message's files, the keyboard alone, and a phone.

The site runs with a small upload limit (so that an oversize file is cheap to make) and a second
model that reads text only (so that a refused message can be seen giving its files back)."""

import io
import re
import time

import pytest
from PIL import Image, ImageDraw
from playwright.sync_api import expect

from tests.browser.conftest import answers, composer, serve_site, wait_until_idle
from tests.upstream import answer

pytestmark = pytest.mark.browser

UPLOAD_LIMIT = 300_000


@pytest.fixture(scope="module")
def attachments_site(upstream_server, tmp_path_factory):
    yield from serve_site(
        tmp_path_factory.mktemp("attachments-site"),
        OPENRESPONSES_BASE_URL=upstream_server.base_url,
        OPENRESPONSES_API_KEY="sk-test",
        OPENRESPONSES_MODELS="test-model,text-model",
        OPENRESPONSES_TIMEOUT="10",
        LOCAL_MODEL_ENABLED="0",
        CHAT_MAX_UPLOAD_BYTES=str(UPLOAD_LIMIT),
        CHAT_MODEL_CAPABILITIES="text-model=",
    )


@pytest.fixture
def site_url(attachments_site):
    return attachments_site


def picture(width=640, height=400):
    """A PNG worth looking at in a screenshot: a sky, a sun and hills."""
    image = Image.new("RGB", (width, height), "#7fb2e5")
    draw = ImageDraw.Draw(image)
    for row in range(height // 2):
        shade = 255 - row // 2
        draw.line([(0, row), (width, row)], fill=(120, 170, shade))
    draw.ellipse([width * 0.62, height * 0.12, width * 0.8, height * 0.12 + width * 0.18], fill="#ffd35c")
    draw.polygon([(0, height), (0, height * 0.6), (width * 0.35, height * 0.42), (width * 0.7, height)], fill="#3f8f4f")
    draw.polygon(
        [(width * 0.3, height), (width * 0.75, height * 0.5), (width, height * 0.66), (width, height)], fill="#2d6e3b"
    )
    out = io.BytesIO()
    image.save(out, "PNG")
    return out.getvalue()


def png_file(name="sunset.png", **size):
    return {"name": name, "mimeType": "image/png", "buffer": picture(**size)}


def text_file(name="notes.txt", text="Milk, eggs, flour.\n"):
    return {"name": name, "mimeType": "text/plain", "buffer": text.encode()}


def attach(page, *files):
    """Picks files with the Attach files button's file chooser, as a person would."""
    with page.expect_file_chooser() as chooser:
        page.get_by_role("button", name="Attach files").click()
    assert chooser.value.is_multiple()
    chooser.value.set_files(list(files))


def tray(page):
    return page.get_by_role("list", name="Files to send")


def chip(page, name):
    return tray(page).get_by_role("listitem").filter(has_text=name)


def wait_uploaded(page, *names):
    for name in names:
        expect(chip(page, name)).to_have_attribute("data-state", "ready")


def questions(page):
    return page.get_by_role("article", name="User message")


def last_input_content(upstream):
    """The content items of the last user message the upstream received."""
    items = upstream.requests[-1]["body"]["input"]
    content = items[-1]["content"]
    return content if isinstance(content, list) else [{"type": "input_text", "text": content}]


WATCH_POLICY = (
    "window.violations = [];"
    "document.addEventListener('securitypolicyviolation', (event) =>"
    " window.violations.push(`${event.violatedDirective} ${event.blockedURI}`));"
)


def image_shown(locator):
    """True once the <img> has loaded and decoded (not a broken image)."""
    return locator.evaluate("image => image.complete && image.naturalWidth > 0")


def send_typed(page, text, upstream, reply="Noted."):
    upstream.queue(answer([reply]))
    box = composer(page)
    box.fill(text)
    box.press("Enter")
    expect(answers(page).last).to_contain_text(reply)
    wait_until_idle(page)


def test_an_image_attached_by_the_button_is_sent_and_shown_full_size_and_after_a_reload(chat, upstream, screenshots):
    # The page's own policy lets the previews (blob:) and the uploads (this site) show, nothing else.
    chat.evaluate(WATCH_POLICY)
    chat.add_init_script(WATCH_POLICY)
    attach(chat, png_file(), text_file("trip.md", "# Trip\n\nDay one: the hills.\n"))
    item = chip(chat, "sunset.png")
    expect(item).to_be_visible()
    expect(item.get_by_role("button", name="Remove sunset.png")).to_be_visible()
    # The thumbnail is the file itself, shown before the upload ends (an object URL).
    thumb = item.locator("img.attachment-thumb")
    expect(thumb).to_have_attribute("src", re.compile(r"^blob:"))
    wait_uploaded(chat, "sunset.png", "trip.md")
    assert image_shown(thumb)

    send_typed(chat, "What is in this picture?", upstream, "A sunset over hills.")
    expect(tray(chat)).to_be_hidden()
    question = questions(chat).last
    image = question.get_by_role("img", name="sunset.png")
    expect(image).to_be_visible()
    chat.wait_for_function("image => image.complete && image.naturalWidth > 0", arg=image.element_handle())
    # The upstream got the picture itself, beside the text.
    content = last_input_content(upstream)
    kinds = [part["type"] for part in content]
    assert "input_image" in kinds and "input_text" in kinds
    assert any("Day one: the hills." in part.get("text", "") for part in content)
    expect(question.get_by_role("link", name=re.compile("trip.md"))).to_have_attribute("download", "trip.md")
    image_part = next(part for part in content if part["type"] == "input_image")
    assert image_part["image_url"].startswith("data:image/png;base64,")
    chat.screenshot(path=screenshots / "attachments-message.png", animations="disabled")

    # The thumbnail opens the image full size, in a dialog that Escape closes.
    link = question.get_by_role("link", name="sunset.png")
    link.click()
    viewer = chat.get_by_role("dialog", name="sunset.png")
    expect(viewer).to_be_visible()
    full = viewer.get_by_role("img", name="sunset.png")
    chat.wait_for_function("image => image.complete && image.naturalWidth === 640", arg=full.element_handle())
    expect(viewer.get_by_role("link", name="Download")).to_have_attribute("download", "sunset.png")
    chat.screenshot(path=screenshots / "attachments-viewer.png", animations="disabled")
    chat.keyboard.press("Escape")
    expect(viewer).to_be_hidden()
    expect(link).to_be_focused()
    assert chat.evaluate("window.violations") == []

    chat.reload()
    image = questions(chat).last.get_by_role("img", name="sunset.png")
    expect(image).to_be_visible()
    chat.wait_for_function("image => image.complete && image.naturalWidth > 0", arg=image.element_handle())
    href = questions(chat).last.get_by_role("link", name="sunset.png").get_attribute("href")
    assert re.fullmatch(r"/uploads/[0-9a-f-]{36}/", href)
    assert chat.evaluate("window.violations") == []


def test_an_image_pasted_into_the_message_box_is_attached_and_sent(chat, context, upstream):
    context.grant_permissions(["clipboard-read", "clipboard-write"])
    box = composer(chat)
    box.fill("Look at this")
    # A real clipboard holding only an image, then a real Ctrl+V into the message box.
    chat.evaluate(
        """async (bytes) => {
            const blob = new Blob([new Uint8Array(bytes)], { type: "image/png" });
            await navigator.clipboard.write([new ClipboardItem({ "image/png": blob })]);
        }""",
        list(picture(320, 200)),
    )
    box.press("Control+V")
    wait_uploaded(chat, "Pasted image 1.png")
    expect(box).to_have_value("Look at this")
    expect(chip(chat, "Pasted image 1.png").locator("img.attachment-thumb")).to_be_visible()

    upstream.queue(answer(["Hills."]))
    box.press("Enter")
    expect(answers(chat).last).to_contain_text("Hills.")
    wait_until_idle(chat)
    image = questions(chat).last.get_by_role("img", name="Pasted image 1.png")
    expect(image).to_be_visible()
    assert any(part["type"] == "input_image" for part in last_input_content(upstream))

    chat.reload()
    image = questions(chat).last.get_by_role("img", name="Pasted image 1.png")
    expect(image).to_be_visible()
    chat.wait_for_function("image => image.complete && image.naturalWidth === 320", arg=image.element_handle())


def test_a_picture_alone_is_a_message(chat, upstream):
    """No words needed beside a file, as in other chat apps: Send wakes once the upload is done."""
    send_button = chat.get_by_role("button", name="Send")
    expect(send_button).to_be_disabled()
    attach(chat, png_file("alone.png"))
    wait_uploaded(chat, "alone.png")
    expect(send_button).to_be_enabled()
    upstream.queue(answer(["A lone picture."]))
    send_button.click()
    expect(answers(chat).last).to_contain_text("A lone picture.")
    wait_until_idle(chat)
    expect(questions(chat).last.get_by_role("img", name="alone.png")).to_be_visible()
    assert [part["type"] for part in last_input_content(upstream)] == ["input_image"]
    expect(chat.get_by_role("navigation", name="Conversations").get_by_text("alone.png")).to_be_visible()


def test_files_dropped_on_the_page_are_attached_with_a_visible_hint(chat):
    transfer = chat.evaluate_handle(
        """() => {
            const transfer = new DataTransfer();
            transfer.items.add(new File(["a,b\\n1,2\\n"], "table.csv", { type: "text/csv" }));
            return transfer;
        }"""
    )
    chat.dispatch_event("#scroller", "dragenter", {"dataTransfer": transfer})
    hint = chat.get_by_text("Drop files to attach them")
    expect(hint).to_be_visible()
    chat.dispatch_event("#scroller", "dragover", {"dataTransfer": transfer})
    chat.dispatch_event("#scroller", "drop", {"dataTransfer": transfer})
    expect(hint).to_be_hidden()
    wait_uploaded(chat, "table.csv")
    expect(chip(chat, "table.csv")).to_contain_text("8 bytes")


def test_refused_files_show_the_servers_error_beside_their_chip_and_nothing_typed_is_lost(chat, upstream, screenshots):
    box = composer(chat)
    box.fill("Here is the shopping list")
    attach(
        chat,
        png_file("holiday.png", width=320, height=200),
        text_file(),
        {"name": "setup.exe", "mimeType": "application/octet-stream", "buffer": b"MZ\x90\x00" + bytes(range(256)) * 4},
        {"name": "huge.txt", "mimeType": "text/plain", "buffer": b"x" * (UPLOAD_LIMIT + 100_000)},
    )
    wait_uploaded(chat, "holiday.png", "notes.txt")
    refused = chip(chat, "setup.exe")
    expect(refused).to_have_attribute("data-state", "failed")
    expect(refused.get_by_role("alert")).to_have_text(re.compile(r"\S"))
    oversize = chip(chat, "huge.txt")
    expect(oversize).to_have_attribute("data-state", "failed")
    expect(oversize.get_by_role("alert")).to_contain_text(str(UPLOAD_LIMIT))
    expect(box).to_have_value("Here is the shopping list")
    expect(chat.get_by_role("button", name="Send")).to_be_enabled()
    chat.screenshot(path=screenshots / "attachments-composer.png", animations="disabled")

    # The server's own sentence for the refused type is what the chip shows.
    answered = chat.evaluate(
        """async () => {
            const body = new FormData();
            body.append("file", new File([new Uint8Array([77, 90, 144, 0, 1, 2, 3])], "again.exe"));
            const token = document.cookie.match(/csrftoken=([^;]+)/)[1];
            const response = await fetch("/uploads/", { method: "POST", body, headers: { "X-CSRFToken": token } });
            return [response.status, await response.json()];
        }"""
    )
    assert answered[0] == 415
    expect(refused.get_by_role("alert")).to_have_text(answered[1]["error"]["message"])

    refused.get_by_role("button", name="Remove setup.exe").click()
    expect(refused).to_have_count(0)
    upstream.queue(answer(["Got them."]))
    box.press("Enter")
    expect(answers(chat).last).to_contain_text("Got them.")
    wait_until_idle(chat)
    # The uploaded files went; the refused one stays in the tray with its error until removed.
    sent = questions(chat).last
    expect(sent.get_by_role("img", name="holiday.png")).to_be_visible()
    download = sent.get_by_role("link", name=re.compile("notes.txt"))
    expect(download).to_have_attribute("download", "notes.txt")
    expect(sent).not_to_contain_text("huge.txt")
    expect(chip(chat, "huge.txt")).to_be_visible()
    texts = [part.get("text", "") for part in last_input_content(upstream)]
    assert any("notes.txt" in text and "Milk, eggs, flour." in text for text in texts)

    with chat.expect_download() as downloaded:
        download.click()
    assert downloaded.value.suggested_filename == "notes.txt"
    assert open(downloaded.value.path(), "rb").read() == b"Milk, eggs, flour.\n"


def test_removing_an_uploaded_chip_deletes_the_upload_on_the_server(chat):
    attach(chat, text_file("draft.md", "# Draft\n"), text_file("keep.txt", "keep"))
    wait_uploaded(chat, "draft.md", "keep.txt")
    with chat.expect_response(re.compile(r"/uploads/[0-9a-f-]{36}/delete/$")) as deleted:
        chip(chat, "draft.md").get_by_role("button", name="Remove draft.md").click()
    assert deleted.value.status == 200
    upload_id = deleted.value.json()["deleted"]
    expect(chip(chat, "draft.md")).to_have_count(0)
    expect(chip(chat, "keep.txt")).to_be_visible()
    assert chat.request.get(f"/uploads/{upload_id}/").status == 404


def test_send_waits_for_an_upload_in_progress_and_says_why(chat, upstream):
    held = []
    # The upload's request waits here until the test lets it through: the upload stays in progress.
    chat.route(re.compile(r"/uploads/$"), lambda route: held.append(route))
    box = composer(chat)
    box.fill("The report")
    attach(chat, text_file("report.txt", "0123456789" * 20_000))
    progress = chat.get_by_role("progressbar", name="Uploading report.txt")
    expect(progress).to_be_visible()
    send_button = chat.get_by_role("button", name="Send")
    expect(send_button).to_be_disabled()
    expect(send_button).to_have_accessible_description(re.compile("Send waits until it is done"))
    box.press("Enter")
    expect(box).to_have_value("The report")
    assert questions(chat).count() == 0

    deadline = time.monotonic() + 30
    while not held and time.monotonic() < deadline:
        chat.wait_for_timeout(50)  # lets Playwright deliver the route to the handler
    assert len(held) == 1
    held[0].continue_()
    expect(progress).to_be_hidden()
    wait_uploaded(chat, "report.txt")
    expect(send_button).to_be_enabled()
    expect(send_button).to_have_accessible_description("")
    expect(chip(chat, "report.txt")).to_contain_text("195 KB")
    upstream.queue(answer(["Read it."]))
    box.press("Enter")
    expect(answers(chat).last).to_contain_text("Read it.")
    expect(questions(chat).last.get_by_role("link", name=re.compile("report.txt"))).to_be_visible()


def test_a_model_that_cannot_read_images_gives_the_text_and_files_back(chat, upstream):
    chat.get_by_label("Model").select_option("text-model")
    attach(chat, png_file("chart.png", width=200, height=120))
    wait_uploaded(chat, "chart.png")
    box = composer(chat)
    box.fill("Explain this chart")
    requests_before = len(upstream.requests)
    box.press("Enter")
    expect(chat.get_by_role("alert").filter(has_text="text-model")).to_be_visible()
    expect(box).to_have_value("Explain this chart")
    expect(chip(chat, "chart.png")).to_have_attribute("data-state", "ready")
    assert len(upstream.requests) == requests_before

    # The same files go with another model.
    chat.get_by_label("Model").select_option("test-model")
    upstream.queue(answer(["A rising line."]))
    box.press("Enter")
    expect(answers(chat).last).to_contain_text("A rising line.")
    expect(questions(chat).last.get_by_role("img", name="chart.png")).to_be_visible()


def test_editing_a_message_shows_its_files_and_sends_only_those_kept(chat, upstream):
    attach(chat, png_file("first.png", width=200, height=120), text_file("list.txt", "apples"))
    wait_uploaded(chat, "first.png", "list.txt")
    send_typed(chat, "Two files", upstream, "Seen both.")
    question = questions(chat).last
    question.get_by_role("button", name="Edit").click()
    kept = question.get_by_role("list", name="Attachments")
    expect(kept.get_by_role("button", name="Remove first.png")).to_be_visible()
    kept.get_by_role("button", name="Remove list.txt").click()
    expect(kept.get_by_role("button", name="Remove list.txt")).to_have_count(0)
    # Focus stays on the remaining file's remove button, for the keyboard.
    expect(kept.get_by_role("button", name="Remove first.png")).to_be_focused()
    upstream.queue(answer(["Only the picture."]))
    question.get_by_role("textbox", name="Edit message").fill("Just the picture")
    question.get_by_role("button", name="Save and send").click()
    expect(answers(chat).last).to_contain_text("Only the picture.")
    wait_until_idle(chat)
    edited = questions(chat).last
    expect(edited.get_by_role("img", name="first.png")).to_be_visible()
    expect(edited).not_to_contain_text("list.txt")
    content = last_input_content(upstream)
    assert [part["type"] for part in content].count("input_image") == 1
    assert not any("apples" in part.get("text", "") for part in content)

    # The earlier version keeps both files.
    edited.get_by_role("button", name="Previous version").click()
    expect(questions(chat).last.get_by_role("link", name=re.compile("list.txt"))).to_be_visible()


def test_attaching_sending_and_viewing_work_with_the_keyboard_alone(chat, upstream):
    box = composer(chat)
    # The wait for the file chooser starts first: Playwright asks the browser to hand it file
    # choosers without waiting for the answer, and a lone key press could overtake that request.
    with chat.expect_file_chooser() as chooser:
        box.focus()
        chat.keyboard.type("By keyboard")
        chat.keyboard.press("Tab")
        expect(chat.get_by_role("button", name="Attach files")).to_be_focused()
        chat.keyboard.press("Enter")
    chooser.value.set_files([png_file("keys.png", width=240, height=160), text_file("extra.txt")])
    wait_uploaded(chat, "keys.png", "extra.txt")
    # A screen reader hears that the wait is over (the page's polite announcer).
    expect(chat.locator("#announcer")).to_have_text(re.compile("ready to send"))

    # Back through the message box to the chips' remove buttons.
    chat.keyboard.press("Shift+Tab")
    expect(box).to_be_focused()
    chat.keyboard.press("Shift+Tab")
    expect(chat.get_by_role("button", name="Remove extra.txt")).to_be_focused()
    chat.keyboard.press("Enter")
    expect(chip(chat, "extra.txt")).to_have_count(0)
    expect(chat.get_by_role("button", name="Remove keys.png")).to_be_focused()

    chat.keyboard.press("Tab")
    expect(box).to_be_focused()
    upstream.queue(answer(["Typed."]))
    chat.keyboard.press("Enter")
    expect(answers(chat).last).to_contain_text("Typed.")
    wait_until_idle(chat)

    # From the message box back to the sent image, and into its full-size view.
    link = questions(chat).last.get_by_role("link", name="keys.png")
    for _ in range(40):
        if link.evaluate("node => node === document.activeElement"):
            break
        chat.keyboard.press("Shift+Tab")
    expect(link).to_be_focused()
    chat.keyboard.press("Enter")
    viewer = chat.get_by_role("dialog", name="keys.png")
    expect(viewer).to_be_visible()
    expect(viewer.get_by_role("button", name="Close")).to_be_focused()
    chat.keyboard.press("Enter")
    expect(viewer).to_be_hidden()
    expect(link).to_be_focused()


def test_the_composer_and_the_sent_files_fit_a_phone(chat, upstream, screenshots):
    chat.set_viewport_size({"width": 360, "height": 740})
    long_name = "a-rather-long-file-name-for-a-small-screen.txt"

    def fits():
        return chat.evaluate("document.documentElement.scrollWidth <= window.innerWidth")

    def inside_the_composer():
        box = chat.locator(".composer-box").bounding_box()
        for item in tray(chat).get_by_role("listitem").all():
            bounds = item.bounding_box()
            assert bounds["x"] >= box["x"] and bounds["x"] + bounds["width"] <= box["x"] + box["width"] + 0.5

    attach(chat, png_file("phone.png", width=300, height=400), text_file(long_name, "long"))
    wait_uploaded(chat, "phone.png", long_name)
    assert fits()
    inside_the_composer()
    send_typed(chat, "From my phone", upstream, "Received.")
    sent = questions(chat).last
    for shown in (sent.get_by_role("img", name="phone.png"), sent.get_by_role("link", name=re.compile(long_name))):
        expect(shown).to_be_visible()
        bounds = shown.bounding_box()
        assert bounds["x"] >= 0 and bounds["x"] + bounds["width"] <= 360
    assert fits()

    # The next message's files, while the sent ones stay in sight above.
    attach(chat, png_file("another.png", width=320, height=200), text_file("list.csv", "a,b\n"))
    wait_uploaded(chat, "another.png", "list.csv")
    composer(chat).fill("And these")
    assert fits()
    inside_the_composer()
    expect(chat.get_by_role("button", name="Send")).to_be_in_viewport()
    expect(chat.get_by_role("button", name="Attach files")).to_be_in_viewport()
    chat.screenshot(path=screenshots / "attachments-phone.png", animations="disabled")


def test_a_file_past_ten_is_not_uploaded_and_its_chip_says_why(chat, upstream):
    uploads = []
    chat.on("request", lambda request: uploads.append(request) if request.url.endswith("/uploads/") else None)
    attach(chat, *(text_file(f"part-{number:02}.txt", f"part {number}") for number in range(1, 12)))
    wait_uploaded(chat, *(f"part-{number:02}.txt" for number in range(1, 11)))
    extra = chip(chat, "part-11.txt")
    expect(extra).to_have_attribute("data-state", "failed")
    expect(extra.get_by_role("alert")).to_have_text("At most 10 files go with one message.")
    assert len(uploads) == 10
    send_typed(chat, "Ten parts", upstream, "All ten.")
    expect(questions(chat).last.get_by_role("listitem")).to_have_count(10)
    assert sum("part " in part.get("text", "") for part in last_input_content(upstream)) == 10
