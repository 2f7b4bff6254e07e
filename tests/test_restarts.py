"""Answers survive the server going away: SIGTERM saves them, SIGKILL leaves them to be reaped.

A real daphne process on the embedded defaults (SQLite, in-memory layer), a real websocket
client and the loopback upstream.
"""

import asyncio
import json
import sqlite3
import time

import pytest
import requests
import websockets

from tests.services import Daphne, migrated_site_env
from tests.upstream import UpstreamServer, answer

pytestmark = pytest.mark.timeout(180)

PASSWORD = "a long test password"
WORDS = [f"w{index} " for index in range(400)]


@pytest.fixture
def upstream_server():
    server = UpstreamServer().start()
    yield server
    server.stop()


@pytest.fixture
def site(tmp_path, upstream_server):
    database = tmp_path / "db.sqlite3"
    env = migrated_site_env(
        database,
        upstream_server.base_url,
        PASSWORD,
        CHAT_CHECKPOINT_INTERVAL="0.2",
        CHAT_HEARTBEAT_INTERVAL="0.5",
        CHAT_HEARTBEAT_TIMEOUT="3",
    )
    server = Daphne("restart", env, tmp_path)
    server.start()
    server.database = database
    yield server
    if server.alive:
        server.kill()


def login_cookie(server):
    session = requests.Session()
    session.get(f"{server.url}/accounts/login/")
    response = session.post(
        f"{server.url}/accounts/login/",
        data={"username": "alice", "password": PASSWORD, "csrfmiddlewaretoken": session.cookies["csrftoken"]},
        headers={"Referer": f"{server.url}/accounts/login/"},
        allow_redirects=False,
    )
    assert response.status_code == 302
    return f"sessionid={session.cookies['sessionid']}"


def rows(server):
    with sqlite3.connect(server.database) as database:
        return database.execute(
            "SELECT status, text, error_code FROM chat_message WHERE role = 'assistant' ORDER BY created_at"
        ).fetchall()


async def start_answer(server, cookie, deltas_before):
    """Send a message and read `deltas_before` deltas; the socket and the text seen so far."""
    socket = await websockets.connect(server.ws_url, additional_headers={"Origin": server.url, "Cookie": cookie})
    await socket.send(json.dumps({"type": "chat.send", "conversation": None, "text": "a long answer, please"}))
    seen, count = "", 0
    while count < deltas_before:
        frame = json.loads(await socket.recv())
        if frame["type"] == "message.delta":
            seen += frame["delta"]
            count += 1
    return socket, seen


def test_sigterm_saves_the_answer_in_flight_as_interrupted_and_tells_the_browser(site, upstream_server):
    upstream_server.queue(answer(WORDS, pause=0.03))
    cookie = login_cookie(site)

    async def scenario():
        socket, seen = await start_answer(site, cookie, 10)
        site.process.terminate()  # SIGTERM, as a service manager stops the server
        frames = []
        try:
            async for raw in socket:
                frames.append(json.loads(raw))
        except websockets.ConnectionClosed:
            pass
        return seen, frames

    seen, frames = asyncio.run(scenario())
    assert site.process.wait(20) is not None
    done = [frame for frame in frames if frame["type"] == "message.done"]
    assert len(done) == 1 and done[0]["status"] == "interrupted"
    [(status, text, code)] = rows(site)
    assert (status, code) == ("interrupted", "server_shutdown")
    assert text.startswith(seen) and text == done[0]["text"]
    assert "".join(WORDS).startswith(text)
    assert upstream_server.requests[0].get("disconnected") or not upstream_server.requests[0]["finished"]


def test_after_sigkill_a_restarted_server_marks_the_answer_interrupted_with_its_checkpoint(site, upstream_server):
    upstream_server.queue(answer(WORDS, pause=0.03))
    cookie = login_cookie(site)

    async def scenario():
        socket, seen = await start_answer(site, cookie, 40)
        await asyncio.sleep(0.5)  # at least one checkpoint interval after those deltas
        site.kill()
        await socket.close()
        return seen

    seen = asyncio.run(scenario())
    [(status, checkpoint, _)] = rows(site)
    assert status == "streaming", "nothing could save it: the process died at once"
    assert checkpoint and "".join(WORDS).startswith(checkpoint)
    # Checkpoints come every 0.2 s here (about 1 s by default): little of what was seen is lost.
    assert len(seen) - len(checkpoint) < 20 * len("w100 ")
    site.start()  # the restarted process reaps at start-up, without waiting for a browser
    for _ in range(100):
        [(status, text, code)] = rows(site)
        if status != "streaming":
            break
        time.sleep(0.1)
    assert (status, code) == ("interrupted", "server_stopped")
    assert text == checkpoint, "the last checkpoint is kept"
