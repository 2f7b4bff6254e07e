"""A live daphne writes a socket's frames itself (chat.socket_writes): every size of frame
arrives whole and in order, a socket that stops reading gets everything once it reads again,
and a session's end still reaches the socket as its error frame, then its close code.

A real daphne process on the embedded defaults (SQLite, in-memory layer), real websocket clients
(the websockets library checks the framing strictly) and the loopback upstream.
"""

import asyncio
import json
import socket
import sqlite3
import threading

import pytest
import requests
import websockets

from chat import protocol
from tests.services import Daphne, migrated_site_env
from tests.upstream import (
    Gate,
    UpstreamServer,
    answer,
    finished,
    message_item,
    started,
    stream,
    text_events,
    usage_object,
)

pytestmark = pytest.mark.timeout(180)

PASSWORD = "a long test password"


@pytest.fixture
def upstream_server():
    server = UpstreamServer().start()
    yield server
    server.stop()


@pytest.fixture
def site(tmp_path, upstream_server):
    env = migrated_site_env(tmp_path / "db.sqlite3", upstream_server.base_url, PASSWORD)
    server = Daphne("socket-writes", env, tmp_path).start()
    server.database = tmp_path / "db.sqlite3"
    yield server
    server.terminate()


def logged_in(server):
    session = requests.Session()
    session.get(f"{server.url}/accounts/login/")
    response = session.post(
        f"{server.url}/accounts/login/",
        data={"username": "alice", "password": PASSWORD, "csrfmiddlewaretoken": session.cookies["csrftoken"]},
        headers={"Referer": f"{server.url}/accounts/login/"},
        allow_redirects=False,
    )
    assert response.status_code == 302
    return session


async def open_socket(server, session, **options):
    cookie = f"sessionid={session.cookies['sessionid']}"
    return await websockets.connect(
        server.ws_url, additional_headers={"Origin": server.url, "Cookie": cookie}, max_size=None, **options
    )


async def frames_until_done(socket, timeout=60):
    frames = []
    while not frames or frames[-1]["type"] != protocol.MESSAGE_DONE:
        frames.append(json.loads(await asyncio.wait_for(socket.recv(), timeout)))
    return frames


def streamed(frames):
    deltas = [frame for frame in frames if frame["type"] == protocol.MESSAGE_DELTA]
    assert [frame["seq"] for frame in deltas] == list(range(1, len(deltas) + 1))
    return "".join(frame["delta"] for frame in deltas)


# Deltas whose frames take each header size of RFC 6455 (7-bit, 16-bit and 64-bit lengths),
# multi-byte characters among them.
DELTAS = ["a", "é" * 40, "b" * 126, "c" * 1000, "☃" * 30000, "d" * 70000, "end"]


def gated_answer(deltas, before, gate):
    """An answer that streams `before` deltas, then waits for `gate` before the rest."""
    events = text_events(deltas)
    final = finished("completed", [message_item("".join(deltas))], usage=usage_object(7, len(deltas)))
    return stream(*started(), *events[: 2 + before], Gate(gate, timeout=60), *events[2 + before :], final)


def test_frames_of_every_size_reach_every_tab_whole_and_in_order(site, upstream_server):
    """The sending tab gets every delta; a second tab that subscribes mid-answer gets the snapshot
    and every delta after it, once; the browser's offer of compression is declined, so these are
    the frames written by chat.socket_writes."""
    gate = threading.Event()
    upstream_server.queue(gated_answer(DELTAS, 3, gate))
    session = logged_in(site)

    async def scenario():
        sender = await open_socket(site, session)
        assert sender.protocol.extensions == []
        await sender.send(json.dumps({"type": "chat.send", "conversation": None, "text": "Hi", "client_id": "c1"}))
        early = []
        while streamed(early) != "".join(DELTAS[:3]):  # coalesced into fewer frames, maybe
            early.append(json.loads(await asyncio.wait_for(sender.recv(), 30)))
        conversation = next(frame for frame in early if frame["type"] == protocol.CONVERSATION_CREATED)
        follower = await open_socket(site, session)
        await follower.send(json.dumps({"type": "chat.subscribe", "conversation": conversation["conversation"]["id"]}))
        joined = []
        while not joined or joined[-1]["type"] != protocol.MESSAGE_SNAPSHOT:
            joined.append(json.loads(await asyncio.wait_for(follower.recv(), 30)))
        gate.set()
        rest, followed = await asyncio.gather(frames_until_done(sender), frames_until_done(follower))
        await sender.close()
        await follower.close()
        return early + rest, joined[-1], followed

    sent, snapshot, followed = asyncio.run(scenario())
    text = "".join(DELTAS)
    assert streamed(sent) == text and sent[-1]["text"] == text and sent[-1]["status"] == "completed"
    deltas = [frame for frame in followed if frame["type"] == protocol.MESSAGE_DELTA]
    assert [frame["seq"] for frame in deltas] == list(range(snapshot["seq"] + 1, snapshot["seq"] + 1 + len(deltas)))
    assert snapshot["text"] + "".join(frame["delta"] for frame in deltas) == text
    assert followed[-1]["text"] == text


def test_a_tab_that_stops_reading_gets_every_frame_in_order_once_it_reads_again(site, upstream_server):
    """Its socket's receive window is tiny and its client reads nothing while answer after answer
    streams, more than the kernel's send buffer of a loopback connection holds (4 MiB at most,
    net.ipv4.tcp_wmem), so the frames wait in Twisted's buffer behind what the socket could not
    take; then the tab reads everything."""
    answers = [[f"{turn}:{number:03d}" + "x" * 3500 for number in range(200)] for turn in range(7)]
    upstream_server.queue(*(answer(deltas) for deltas in answers))
    session = logged_in(site)

    async def scenario():
        tiny = socket.socket()
        tiny.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        tiny.connect(("127.0.0.1", site.port))
        tiny.setblocking(False)
        reader = await open_socket(site, session, sock=tiny, max_queue=1)
        send = {"type": "chat.send", "conversation": None, "text": "Hi", "client_id": "turn-0"}
        await reader.send(json.dumps(send))
        created = json.loads(await asyncio.wait_for(reader.recv(), 30))
        send["conversation"] = created["conversation"]["id"]
        for turn in range(1, len(answers) + 1):
            while completed_answers(site) < turn:  # reading nothing meanwhile; the test's timeout bounds it
                await asyncio.sleep(0.05)
            if turn < len(answers):
                await reader.send(json.dumps({**send, "client_id": f"turn-{turn}"}))
        frames = []
        while sum(frame["type"] == protocol.MESSAGE_DONE for frame in frames) < len(answers):
            frames.append(json.loads(await asyncio.wait_for(reader.recv(), 30)))
        await reader.close()
        return frames

    frames = asyncio.run(scenario())
    by_answer = {}
    for frame in frames:
        if frame["type"] in (protocol.MESSAGE_DELTA, protocol.MESSAGE_DONE):
            by_answer.setdefault(frame["message"], []).append(frame)
    assert [streamed(got) for got in by_answer.values()] == ["".join(deltas) for deltas in answers]
    assert [got[-1]["text"] for got in by_answer.values()] == ["".join(deltas) for deltas in answers]


def completed_answers(server):
    with sqlite3.connect(server.database) as database:
        [(count,)] = database.execute(
            "SELECT count(*) FROM chat_message WHERE role = 'assistant' AND status = 'completed'"
        ).fetchall()
    return count


def test_a_session_ended_mid_answer_still_sends_its_error_frame_then_its_close_code(site, upstream_server):
    upstream_server.queue(answer([f"w{number} " for number in range(300)], pause=0.02))
    session = logged_in(site)

    async def scenario():
        tab = await open_socket(site, session)
        await tab.send(json.dumps({"type": "chat.send", "conversation": None, "text": "Hi", "client_id": "c3"}))
        frames = []
        while sum(frame["type"] == protocol.MESSAGE_DELTA for frame in frames) < 3:
            frames.append(json.loads(await asyncio.wait_for(tab.recv(), 30)))
        logged_out = await asyncio.to_thread(
            session.post,
            f"{site.url}/accounts/logout/",
            data={"csrfmiddlewaretoken": session.cookies["csrftoken"]},
            headers={"Referer": f"{site.url}/"},
            allow_redirects=False,
        )
        assert logged_out.status_code == 302
        try:
            while True:
                frames.append(json.loads(await asyncio.wait_for(tab.recv(), 30)))
        except websockets.ConnectionClosed as closed:
            return frames, closed.rcvd.code

    frames, code = asyncio.run(scenario())
    assert code == protocol.CLOSE_SESSION_ENDED
    assert frames[-1]["type"] == "error" and frames[-1]["code"] == "logged_out"
    streamed(frames)  # the deltas before it, in order
