"""The websocket handshake accepts only this site's own full origin (chat/origin.py)."""

import pytest

from tests.websocket import connect, receive

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.asyncio]

SITE = "http://127.0.0.1:8000"  # the page's origin for a socket whose Host is 127.0.0.1:8000

FOREIGN_ORIGINS = [
    "http://127.0.0.1:1",  # another port of the same host
    "http://127.0.0.1:80",
    "http://127.0.0.1",
    "http://127.0.0.1:08000",
    "https://127.0.0.1:8000",  # another scheme
    "https://127.0.0.1",
    "ws://127.0.0.1:8000",
    "ftp://127.0.0.1:8000",
    "file://",
    "http://localhost:8000",  # an allowed host, but not the one this page was served from
    "http://localhost:3000",
    "ftp://localhost",
    "http://[::1]:8000",
    "http://evil.example",
    "https://evil.example",
    "http://127.0.0.1:8000.evil.example",
    "http://127.0.0.1.evil.example:8000",
    "http://evil.example#http://127.0.0.1:8000",
    "http://user@127.0.0.1:8000",  # userinfo: never in a browser's Origin
    "http://127.0.0.1:8000@evil.example",
    "http://127.0.0.1:8000/",  # trailing slash, paths, queries
    "http://127.0.0.1:8000/chat",
    "http://127.0.0.1:8000?x",
    "HTTP://127.0.0.1:8000",  # case: browsers serialise origins in lower case
    "Http://127.0.0.1:8000",
    " http://127.0.0.1:8000",
    "http://127.0.0.1:8000 ",
    "http://0x7f.0.0.1:8000",
    "http://2130706433:8000",
    "null",  # sandboxed frames, file: pages, some redirects
    "",
    "*",
    "http://127.0.0.1:8000, http://127.0.0.1:8000",
    "http://[::1",
    "http://127.0.0.1:8000\x00",
]


async def opens(alice, **handshake):
    communicator, connected, _ = await connect(alice, **handshake)
    if connected:
        # Accepted means usable: the consumer answers.
        await communicator.send_json_to({"type": "chat.unknown"})
        assert (await receive(communicator))["code"] == "unknown_type"
    await communicator.disconnect()
    return connected


def origin(value):
    return (b"origin", value.encode("latin1"))


async def test_the_sites_own_origin_opens_a_socket(alice):
    assert await opens(alice, origin=origin(SITE))


@pytest.mark.parametrize("foreign", FOREIGN_ORIGINS)
async def test_any_other_origin_is_refused(alice, foreign):
    assert not await opens(alice, origin=origin(foreign))


async def test_a_missing_origin_is_refused(alice):
    assert not await opens(alice, origin=None)


async def test_two_origin_headers_are_refused(alice):
    assert not await opens(alice, origin=origin(SITE), headers=[origin(SITE)])


@pytest.mark.parametrize(
    ("host", "page"),
    [
        ("localhost:8000", "http://localhost:8000"),
        ("[::1]:8000", "http://[::1]:8000"),
        ("127.0.0.1", "http://127.0.0.1"),
    ],
)
async def test_each_allowed_host_accepts_its_own_origin_only(alice, host, page):
    handshake = {"host": (b"host", host.encode())}
    assert await opens(alice, origin=origin(page), **handshake)
    assert not await opens(alice, origin=origin(SITE if page != SITE else "http://localhost:8000"), **handshake)
    assert not await opens(alice, origin=origin(page.replace("http:", "https:")), **handshake)


@pytest.mark.parametrize("host", ["evil.example", "evil.example:8000", "127.0.0.1.evil.example:8000", "", None])
async def test_a_host_outside_allowed_hosts_is_refused_whatever_the_origin(alice, host):
    """DNS rebinding: a page of evil.example resolved to this machine is same-origin with itself."""
    handshake = {"host": None if host is None else (b"host", host.encode())}
    assert not await opens(alice, origin=origin(f"http://{host}"), **handshake)
    assert not await opens(alice, origin=origin(SITE), **handshake)


async def test_a_secure_socket_needs_the_https_origin(alice):
    secure = {"scope": {"scheme": "wss"}}
    assert await opens(alice, origin=origin("https://127.0.0.1:8000"), **secure)
    assert not await opens(alice, origin=origin(SITE), **secure)


async def test_daphne_naming_no_scheme_means_https_when_the_site_redirects_to_it(alice, settings):
    settings.SECURE_SSL_REDIRECT = True
    assert await opens(alice, origin=origin("https://127.0.0.1:8000"))
    assert not await opens(alice, origin=origin(SITE))


async def test_behind_a_tls_proxy_the_forwarded_scheme_counts_only_when_trusted(alice, settings):
    forwarded = {"headers": [(b"x-forwarded-proto", b"https")]}
    # Not configured to trust the proxy: the header is the client's word and changes nothing.
    assert await opens(alice, origin=origin(SITE), **forwarded)
    assert not await opens(alice, origin=origin("https://127.0.0.1:8000"), **forwarded)
    settings.SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    assert await opens(alice, origin=origin("https://127.0.0.1:8000"), **forwarded)
    assert not await opens(alice, origin=origin(SITE), **forwarded)
    plain = {"headers": [(b"x-forwarded-proto", b"http")]}
    assert await opens(alice, origin=origin(SITE), **plain)
    assert not await opens(alice, origin=origin("https://127.0.0.1:8000"), **plain)


PROXIED = {"host": (b"host", b"backend.internal:8001")}


@pytest.mark.parametrize(
    ("candidate", "accepted"),
    [
        ("https://chat.example.com", True),
        ("http://chat.example.com", False),
        ("https://chat.example.com:8443", False),
        ("https://chat.example.com:443", False),
        ("https://evil.chat.example.com", False),
        ("https://chat.example.com.evil.example", False),
        ("https://CHAT.example.com", False),
        ("https://chat.example.com/", False),
        ("https://user@chat.example.com", False),
        ("https://a.example.org", True),
        ("https://deep.a.example.org", True),
        ("https://example.org", True),
        ("http://a.example.org", False),
        ("https://a.example.org:8443", False),
        ("https://a.example.org.evil.example", False),
        ("https://evilexample.org", False),
        ("http://backend.internal:8001", True),  # the Host the processes see is still the site's own
        ("https://backend.internal:8001", False),
        ("null", False),
    ],
)
async def test_behind_a_proxy_the_trusted_origins_count(alice, settings, candidate, accepted):
    """The browser sees https://chat.example.com; the proxy passes another Host to the processes."""
    settings.ALLOWED_HOSTS = ["backend.internal"]
    settings.CSRF_TRUSTED_ORIGINS = ["https://chat.example.com", "https://*.example.org"]
    assert await opens(alice, origin=origin(candidate), **PROXIED) is accepted


async def test_trusted_origins_do_not_admit_a_foreign_host(alice, settings):
    settings.CSRF_TRUSTED_ORIGINS = ["https://chat.example.com"]
    assert not await opens(alice, origin=origin("https://chat.example.com"), host=(b"host", b"evil.example"))


async def test_an_anonymous_socket_from_the_right_origin_is_still_refused(db):
    assert not await opens(None, origin=origin(SITE))
