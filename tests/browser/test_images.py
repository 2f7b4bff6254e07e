"""Images in answers never load from this site, whatever the shape of their URL, and load only from
CHAT_IMAGE_HOSTS: live while the answer streams, after a reload, and when staff read the
transcript in the admin. Each URL pointing at this site carries `probe` in its path or query, so any
request one of them caused, to any host, would be seen among Playwright's request events."""

import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from playwright.sync_api import expect

from tests.browser.conftest import answers, chunks, log_in, send, serve_site, wait_until_idle
from tests.upstream import answer

pytestmark = pytest.mark.browser

# A 1x1 transparent PNG.
PIXEL = bytes.fromhex(
    "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
    "1f15c4890000000d49444154789c6360000002000154a24f5d0000000049454e44ae426082"
)


class ImageServer(ThreadingHTTPServer):
    """The one allowed image host, on loopback, recording every path asked for."""

    daemon_threads = True

    def __init__(self):
        self.paths = []
        super().__init__(("127.0.0.1", 0), ImageHandler)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def host(self):
        # Another host name than the site's 127.0.0.1: cookies ignore ports, so the same name on
        # another port would be this site as far as the reader's cookies go.
        return f"localhost:{self.server_address[1]}"


class ImageHandler(BaseHTTPRequestHandler):
    def do_GET(self):
        self.server.paths.append(self.path)
        self.send_response(200)
        self.send_header("Content-Type", "image/png")
        self.send_header("Content-Length", str(len(PIXEL)))
        self.send_header("Cache-Control", "no-store")  # each page load asks again
        self.end_headers()
        self.wfile.write(PIXEL)

    def log_message(self, format, *args):
        pass


@pytest.fixture(scope="module")
def image_server():
    server = ImageServer()
    yield server
    server.shutdown()


@pytest.fixture(scope="module")
def image_site(upstream_server, image_server, tmp_path_factory):
    yield from serve_site(
        tmp_path_factory.mktemp("image-site"),
        OPENRESPONSES_BASE_URL=upstream_server.base_url,
        OPENRESPONSES_API_KEY="sk-test",
        OPENRESPONSES_MODELS="test-model",
        CHAT_IMAGE_HOSTS=image_server.host,
        LOCAL_MODEL_ENABLED="0",
    )


@pytest.fixture
def site_url(image_site):
    return image_site


def shapes(site, images):
    """Markdown images in every shape a URL to this site can take, then the allowed ones."""
    host = site.removeprefix("http://")  # 127.0.0.1:port
    blocked = [
        "/admin/?probe=root",
        "admin/?probe=relative",
        "./probe-dot.png",
        "../probe-up.png",
        f"//{host}/admin/?probe=protocol-relative",
        f"http://{host}/admin/?probe=absolute",
        f"HTTP://{host.upper()}/admin/?probe=upper",
        f"http://{host}/static/chat/favicon.svg?probe=static-absolute",
        "/static/chat/favicon.svg?probe=static",
        f"%2F%2F{host}/admin/?probe=encoded",
        f"\\/\\/{host}/admin/?probe=escaped-slashes",
        f"\\\\\\\\{host}\\\\admin?probe=backslashes",
        f"http:\\\\\\\\{host}\\\\admin?probe=scheme-backslashes",
        "http:/admin/?probe=one-slash",
        "http:admin?probe=no-slash",
        f"http://0x7f.0.0.1:{host.split(':')[1]}/admin/?probe=hex-ip",
        f"http://127.0.0.1.:{host.split(':')[1]}/admin/?probe=trailing-dot",
        f"http://[::ffff:127.0.0.1]:{host.split(':')[1]}/admin/?probe=mapped",
        f"http://{images}@{host}/admin/?probe=userinfo",
        f"http://user:secret@{images}/probe-credentials.png",
        f"http://127.0.0.2:{images.split(':')[1]}/probe-other-host.png",
        "https://tracker.example/probe-tracker.png",
        "data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR4nGNgAAIAAAUAAarVyFEAAAAASUVORK5CYII=",
        f"blob:http://{host}/probe-blob",
        "javascript:window.__probe=1",
        f"<//{host}/admin/?probe=angle-brackets>",
        '/admin/?probe=titled "a title"',
        "  /admin/?probe=spaces  ",
    ]
    lines = [f"Image {number}: ![blocked {number}]({url})" for number, url in enumerate(blocked)]
    lines += [
        "Reference: ![ref one][r1] and ![ref two][r2]",
        "",
        "[r1]: /admin/?probe=reference",
        f"[r2]: //{host}/admin/?probe=reference-protocol-relative",
        "",
        '<img src="/admin/?probe=raw-html"> <img srcset="/admin/?probe=srcset 1x">',
        '<picture><source srcset="/admin/?probe=source"></picture> <video poster="/admin/?probe=poster"></video>',
        '<svg><image href="/admin/?probe=svg-image"/></svg> <input type="image" src="/admin/?probe=input">',
    ]
    allowed = [f"http://{images}/ok-plain.png", f"http://{images.upper()}/ok-upper.png", f"http:{images}/ok-odd.png"]
    lines += [f"Allowed {number}: ![allowed {number}]({url})" for number, url in enumerate(allowed)]
    return "\n\n".join(lines), len(blocked) + 2, ["/ok-plain.png", "/ok-upper.png", "/ok-odd.png"]


def watch(page, site, images):
    """Every request the page makes to another host than the site and the allowed one, and every
    request (to any host) for a `probe` URL."""
    bad = []

    def check(request):
        url = request.url
        if "probe" in url or not url.startswith((site, f"http://{images}/", "data:")):
            bad.append(url)

    page.on("request", check)
    return bad


def expect_images_settled(page, image_server, expected_paths, blocked):
    """The allowed images loaded (so the answer was rendered with all its images), the others show
    their text stand-in, and no <img> has any other source."""
    reply = answers(page).first
    expect(reply.locator(".blocked-image")).to_have_count(blocked)
    allowed = reply.locator("img")
    expect(allowed).to_have_count(len(expected_paths))
    for index in range(len(expected_paths)):
        expect(allowed.nth(index)).to_have_js_property("complete", True)
        assert allowed.nth(index).evaluate("image => image.naturalWidth") == 1
    sources = allowed.evaluate_all("images => images.map((image) => image.getAttribute('src'))")
    assert sorted(source.split("/", 3)[-1] for source in sources) == sorted(path[1:] for path in expected_paths)
    assert all(source.startswith(f"http://{image_server.host}/") for source in sources)


@pytest.mark.timeout(180)
def test_answer_images_never_load_from_this_site_whatever_the_url_shape(page, upstream, image_site, image_server):
    page.set_viewport_size({"width": 1200, "height": 6000})  # no image waits for a scroll (lazy)
    bad = watch(page, image_site, image_server.host)
    text, blocked, expected_paths = shapes(image_site, image_server.host)
    log_in(page)
    page.get_by_role("status").filter(has_text="Connected").wait_for()
    upstream.queue(answer(chunks(text, 5)))  # URLs broken across deltas while they stream
    send(page, "Show me some pictures.")
    wait_until_idle(page)
    expect_images_settled(page, image_server, expected_paths, blocked)
    assert page.evaluate("window.__probe") is None
    assert bad == []
    assert sorted(image_server.paths) == sorted(expected_paths)

    image_server.paths.clear()
    page.reload()
    expect(answers(page).first).to_contain_text("Allowed 2")
    expect_images_settled(page, image_server, expected_paths, blocked)
    assert bad == []
    assert sorted(image_server.paths) == sorted(expected_paths)

    # A member of staff reads the transcript in the admin: text, no image of any kind.
    image_server.paths.clear()
    page.context.clear_cookies()
    log_in(page, "root")
    page.goto("/admin/chat/conversation/")
    page.get_by_role("link", name=re.compile("Show me some pictures")).first.click()
    expect(page.locator(".transcript")).to_contain_text("Allowed 2")
    assert page.locator(".transcript img").count() == 0
    assert bad == []
    assert image_server.paths == []
