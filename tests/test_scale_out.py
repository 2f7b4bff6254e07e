"""Scale-out: two daphne processes, A and B, sharing one PostgreSQL, one Redis and one S3 bucket
(moto's server), all real.

The servers run on loopback, started by fixtures (tests/services.py); the upstream is the loopback
SSE server of tests/upstream.py in this process. Browser tabs are real websocket clients that log in
over HTTP. Rows are read straight from PostgreSQL: that is where both processes keep them.

These tests start their own PostgreSQL and Redis whatever DATABASE_URL and REDIS_URL say, so they
prove the same thing in the SQLite run of the suite and in the PostgreSQL + Redis one. Each process
has a MEDIA_ROOT of its own, which must stay empty: uploads live in the bucket alone.
"""

import asyncio
import json
import pathlib
import time
import uuid

import botocore.exceptions
import pytest
import requests
from django.contrib.auth.hashers import make_password
from psycopg.rows import dict_row
from websockets.asyncio.client import connect as websocket_connect

from tests.forms import form_fields
from tests.services import (  # noqa: F401  (the fixtures are used by name)
    Daphne,
    ServiceError,
    http_get,
    manage,
    postgres_server,
    redis_server,
    s3_server,
    site_env,
)
from tests.upstream import Gate, UpstreamServer, answer, usage_object

PASSWORD = "correct horse battery"
HEARTBEAT_INTERVAL = 0.5
HEARTBEAT_TIMEOUT = 3
SENDS_PER_MINUTE = 4
UPLOAD_SWEEP_SECONDS = 1

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(120)]


# --- The cluster ------------------------------------------------------------------------------


class Cluster:
    """Daphne processes A and B on one database and one Redis, and ways to look inside."""

    def __init__(self, a, b, postgres, s3):
        self.a = a
        self.b = b
        self.postgres = postgres
        self.s3 = s3
        self.password_hash = make_password(PASSWORD)

    def ensure_running(self):
        for server in (self.a, self.b):
            if not server.alive:
                server.start()

    def restart(self, server):
        server.terminate()
        server.start()

    def sql(self, query, params=()):
        with self.postgres.connect(autocommit=True, row_factory=dict_row) as db:
            cursor = db.execute(query, params)
            return cursor.fetchall() if cursor.description else []

    def create_user(self, daily_token_budget=None):
        """A new account (unique name) with PASSWORD, and an optional daily token budget."""
        username = f"user-{uuid.uuid4().hex[:10]}"
        [user] = self.sql(
            "INSERT INTO auth_user (password, is_superuser, username, first_name, last_name, email, is_staff,"
            " is_active, date_joined) VALUES (%s, false, %s, '', '', %s, false, true, now()) RETURNING id",
            (self.password_hash, username, f"{username}@example.com"),
        )
        if daily_token_budget is not None:
            self.sql(
                "INSERT INTO chat_accountlimits (user_id, daily_token_budget) VALUES (%s, %s)",
                (user["id"], daily_token_budget),
            )
        return username

    def log_in(self, username, server):
        """Log in through one server's login form, as a browser does; returns the session key."""
        return self.browser(username, server).cookies["sessionid"]

    def browser(self, username, server):
        """A browser's HTTP session logged in through one server's login form."""
        http = requests.Session()
        http.trust_env = False
        http.get(f"{server.url}/accounts/login/", timeout=10).raise_for_status()
        response = http.post(
            f"{server.url}/accounts/login/",
            data={"username": username, "password": PASSWORD, "csrfmiddlewaretoken": http.cookies["csrftoken"]},
            allow_redirects=False,
            timeout=10,
        )
        assert response.status_code == 302, f"login failed: {response.status_code}"
        return http

    def message(self, message_id):
        [row] = self.sql("SELECT * FROM chat_message WHERE id = %s", (message_id,))
        return row

    async def wait_for_message(self, message_id, condition, timeout, what):
        deadline = time.monotonic() + timeout
        while True:
            row = self.message(message_id)
            if condition(row):
                return row
            if time.monotonic() > deadline:
                pytest.fail(f"{what} within {timeout} s; the row is {row['status']} ({row['error_code']!r})")
            await asyncio.sleep(0.05)


class Tab:
    """One browser tab: a websocket to one server process, with the session cookie of a login."""

    def __init__(self, websocket):
        self.websocket = websocket
        self.frames = []  # (arrival time, frame)

    @classmethod
    async def open(cls, server, session_key):
        websocket = await websocket_connect(
            server.ws_url,
            origin=server.url,
            additional_headers={"Cookie": f"sessionid={session_key}"},
            open_timeout=5,
            proxy=None,
            max_size=None,
            compression=None,
        )
        return cls(websocket)

    async def send(self, frame_type, **fields):
        await self.websocket.send(json.dumps({"type": frame_type, **fields}))

    async def receive(self, timeout=5):
        raw = await asyncio.wait_for(self.websocket.recv(), timeout)
        frame = json.loads(raw)
        self.frames.append((time.monotonic(), frame))
        return frame

    async def receive_until(self, frame_type, message=None, timeout=10):
        """Frames up to and including the first of `frame_type` (for `message`, when given)."""
        frames = []
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            try:
                frame = await self.receive(timeout=max(0.01, remaining))
            except TimeoutError:
                seen = [frame["type"] for frame in frames]
                pytest.fail(f"no {frame_type} frame within {timeout} s; got {seen}")
            frames.append(frame)
            if frame["type"] == frame_type and (message is None or frame.get("message") == message):
                return frames

    async def close(self):
        await self.websocket.close()


def assistant_message(frames):
    return next(
        frame["message"]
        for frame in frames
        if frame["type"] == "message.created" and frame["message"]["role"] == "assistant"
    )


def deltas_of(frames, message_id):
    return [frame for frame in frames if frame["type"] == "message.delta" and frame["message"] == message_id]


@pytest.fixture(scope="session")
def cluster_upstream():
    """The upstream both server processes talk to (the function-scoped `upstream` is per process)."""
    server = UpstreamServer().start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def cluster(postgres_server, redis_server, s3_server, cluster_upstream, tmp_path_factory):  # noqa: F811
    env = site_env(
        **s3_server.env,
        CHAT_UPLOAD_SWEEP_SECONDS=UPLOAD_SWEEP_SECONDS,
        DJANGO_DEBUG="1",
        DATABASE_URL=postgres_server.url,
        REDIS_URL=redis_server.url,
        # As docs/deploy.md has production: connections from psycopg's pool, given back after use.
        DATABASE_POOL="1",
        DATABASE_POOL_MAX_SIZE="20",
        DJANGO_ALLOWED_HOSTS="127.0.0.1",
        OPENRESPONSES_BASE_URL=cluster_upstream.base_url,
        OPENRESPONSES_API_KEY="sk-test",
        OPENRESPONSES_MODELS="test-model",
        OPENRESPONSES_TIMEOUT="10",
        LOCAL_MODEL_ENABLED="0",
        CHAT_HEARTBEAT_INTERVAL=HEARTBEAT_INTERVAL,
        CHAT_HEARTBEAT_TIMEOUT=HEARTBEAT_TIMEOUT,
        CHAT_CHECKPOINT_INTERVAL="0.2",
        CHAT_SENDS_PER_MINUTE=SENDS_PER_MINUTE,
        CHAT_DAILY_TOKEN_BUDGET="0",
        # An answer holds what it may write: with this limit two answers share a budget of 1500
        # (test_racing_sends_through_both_processes_overspend_the_budget_by_at_most_one_answer).
        CHAT_MAX_OUTPUT_TOKENS="1000",
    )
    logs = tmp_path_factory.mktemp("cluster")
    a = Daphne("A", {**env, "DJANGO_MEDIA_ROOT": str(logs / "media-a")}, logs)
    b = Daphne("B", {**env, "DJANGO_MEDIA_ROOT": str(logs / "media-b")}, logs)
    try:
        manage(env, "migrate", "--noinput")
        a.start()
        b.start()
    except ServiceError as error:
        for server in (a, b):
            if server.process:
                server.kill()
        pytest.fail(str(error), pytrace=False)
    yield Cluster(a, b, postgres_server, s3_server)
    for server in (a, b):
        if server.process:
            server.terminate()


@pytest.fixture
def site(cluster, cluster_upstream):
    """The cluster with both processes up (a test may have killed one) and nothing queued upstream."""
    try:
        cluster.ensure_running()
    except ServiceError as error:
        pytest.fail(str(error), pytrace=False)
    with cluster_upstream.lock:
        cluster_upstream.scenarios.clear()
    yield cluster
    # Shown only when the test fails, as its captured output.
    print(f"--- daphne A ---\n{cluster.a.log()}\n--- daphne B ---\n{cluster.b.log()}")


@pytest.fixture
def upstream(cluster_upstream):
    """This module's upstream is the cluster's (conftest's `upstream` configures this process)."""
    return cluster_upstream


async def start_answer(tab, text="Tell me a story", conversation=None):
    """Send a message; returns (conversation id, answer id) once the answer's first delta arrived."""
    await tab.send("chat.send", conversation=conversation, text=text, client_id=uuid.uuid4().hex)
    frames = await tab.receive_until("message.delta")
    answer_id = assistant_message(frames)["id"]
    return assistant_message(frames)["conversation"], answer_id


# --- The properties ---------------------------------------------------------------------------


async def test_both_processes_are_ready_on_the_shared_database_channel_layer_and_cache(site):
    for server in (site.a, site.b):
        status, _, body = await asyncio.to_thread(http_get, f"{server.url}/readyz")
        assert status == 200, body
        assert json.loads(body)["checks"] == {"database": "ok", "cache": "ok", "channel_layer": "ok"}


async def test_an_answer_sent_through_a_streams_live_to_a_tab_on_b(site, upstream):
    session = site.log_in(site.create_user(), site.a)
    tab_a = await Tab.open(site.a, session)
    await tab_a.send("chat.send", conversation=None, text="Hello", client_id=uuid.uuid4().hex)
    first = await tab_a.receive_until("message.done")
    conversation_id = first[0]["conversation"]["id"]

    tab_b = await Tab.open(site.b, session)
    await tab_b.send("chat.subscribe", conversation=conversation_id)
    await tab_b.receive_until("conversation.subscribed")

    words = [f"word{number} " for number in range(20)]
    upstream.queue(answer(words, pause=0.08))
    await tab_a.send("chat.send", conversation=conversation_id, text="And now?", client_id=uuid.uuid4().hex)
    frames_a, frames_b = await asyncio.gather(
        tab_a.receive_until("message.done", timeout=15), tab_b.receive_until("message.done", timeout=15)
    )

    created = [frame["message"]["role"] for frame in frames_b if frame["type"] == "message.created"]
    assert created == ["user", "assistant"]
    answer_id = assistant_message(frames_b)["id"]
    deltas_b = deltas_of(frames_b, answer_id)
    assert "".join(frame["delta"] for frame in deltas_b) == "".join(words) == frames_b[-1]["text"]
    assert [frame["seq"] for frame in deltas_b] == list(range(1, len(deltas_b) + 1))
    assert frames_b[-1]["status"] == "completed"

    # Live: each delta reaches the tab on B about when it reaches the tab on A, the sender's process,
    # not in a burst at the end.
    arrivals_a = {frame["seq"]: at for at, frame in tab_a.frames if frame["type"] == "message.delta"}
    arrivals_b = {frame["seq"]: at for at, frame in tab_b.frames if frame["type"] == "message.delta"}
    assert arrivals_a.keys() == arrivals_b.keys()
    lags = [arrivals_b[seq] - arrivals_a[seq] for seq in arrivals_a]
    assert max(abs(lag) for lag in lags) < 0.25, lags
    done_at_b = tab_b.frames[-1][0]
    assert done_at_b - min(arrivals_b.values()) > 0.8, "the deltas reached B in one burst"
    await tab_a.close()
    await tab_b.close()


async def test_a_broken_redis_subscription_mid_answer_loses_nothing_on_b(site, upstream, redis_server):  # noqa: F811
    """Pub/sub delivers only to whoever is connected: when B's subscription connection is cut
    mid-answer, B subscribes again and brings its tab up to date from the snapshot."""
    import redis

    session = site.log_in(site.create_user(), site.a)
    tab_a = await Tab.open(site.a, session)
    tab_b = await Tab.open(site.b, session)
    words = [f"w{number} " for number in range(40)]
    upstream.queue(answer(words, pause=0.05))
    conversation_id, answer_id = await start_answer(tab_a)
    await tab_b.send("chat.subscribe", conversation=conversation_id)
    await tab_b.receive_until("conversation.subscribed")
    await asyncio.sleep(0.4)
    client = redis.Redis.from_url(redis_server.url)
    try:
        killed = client.client_kill_filter(_type="pubsub")
    finally:
        client.close()
    assert killed >= 1
    frames_b = await tab_b.receive_until("message.done", message=answer_id, timeout=15)
    await tab_a.receive_until("message.done", message=answer_id, timeout=15)

    # B rebuilds the text the way the page does: the latest snapshot, then the deltas after it.
    text, last_seq = None, 0
    for frame in frames_b:
        if frame["type"] == "message.snapshot" and frame["message"] == answer_id:
            text, last_seq = frame["text"], frame["seq"]
        elif frame["type"] == "message.delta" and frame["message"] == answer_id:
            assert frame["seq"] == last_seq + 1, "a delta went missing or came twice"
            text, last_seq = text + frame["delta"], frame["seq"]
    assert text == "".join(words) == frames_b[-1]["text"]
    resubscribed = [frame for frame in frames_b if frame["type"] == "conversation.subscribed"]
    assert resubscribed, "B was not brought up to date after its subscription broke"
    await tab_a.close()
    await tab_b.close()


async def test_stop_sent_through_b_stops_the_worker_in_a_within_a_second(site, upstream):
    session = site.log_in(site.create_user(), site.b)
    upstream.queue(answer([f"slow{number} " for number in range(100)], pause=0.1))
    tab_a = await Tab.open(site.a, session)
    conversation_id, answer_id = await start_answer(tab_a)
    tab_b = await Tab.open(site.b, session)
    await tab_b.send("chat.subscribe", conversation=conversation_id)
    await tab_b.receive_until("message.snapshot")
    request = upstream.requests[-1]

    stopped_at = time.monotonic()
    await tab_b.send("chat.stop", message=answer_id)
    frames_b = await tab_b.receive_until("message.done", message=answer_id, timeout=5)
    took = time.monotonic() - stopped_at
    assert frames_b[-1]["status"] == "cancelled"
    assert took < 1.0, f"Stop through B took {took:.2f} s to end the answer in A"
    while not request.get("disconnected") and time.monotonic() - stopped_at < 1.0:
        await asyncio.sleep(0.02)
    assert request.get("disconnected"), "A's worker did not close its upstream request within a second"

    row = site.message(answer_id)
    assert row["status"] == "cancelled"
    assert row["text"] == frames_b[-1]["text"] != ""
    frames_a = await tab_a.receive_until("message.done", message=answer_id, timeout=5)
    assert frames_a[-1]["status"] == "cancelled"
    await tab_a.close()
    await tab_b.close()


def deactivate_in_the_admin_of(server, staff, username, user_id):
    """Log in to `server`'s admin as `staff`, untick the user's "Active" and save the form as it stands."""
    http = requests.Session()
    http.trust_env = False
    login = f"{server.url}/admin/login/"
    http.get(login, timeout=10).raise_for_status()
    response = http.post(
        login,
        data={
            "username": staff,
            "password": PASSWORD,
            "csrfmiddlewaretoken": http.cookies["csrftoken"],
            "next": "/admin/",
        },
        allow_redirects=False,
        timeout=10,
    )
    assert response.status_code == 302, f"admin login failed: {response.status_code}"
    change = f"{server.url}/admin/auth/user/{user_id}/change/"
    page = http.get(change, timeout=10)
    assert page.status_code == 200
    data = form_fields(page.text, "user_form")
    assert data.pop("is_active") == ["on"]
    return http.post(change, data=data, allow_redirects=False, timeout=10)


async def test_deactivating_a_user_in_bs_admin_ends_their_answer_in_a_as_cancelled_with_its_text(site, upstream):
    """The stop crosses processes as a request on the row: B's admin answers at once, A's worker ends it."""
    username = site.create_user()
    session = site.log_in(username, site.a)
    staff = site.create_user()
    site.sql("UPDATE auth_user SET is_staff = true, is_superuser = true WHERE username = %s", (staff,))
    [user] = site.sql("SELECT id FROM auth_user WHERE username = %s", (username,))
    words = [f"slow{number} " for number in range(100)]
    upstream.queue(answer(words, pause=0.1))
    tab_a = await Tab.open(site.a, session)
    _, answer_id = await start_answer(tab_a)
    request = upstream.requests[-1]

    response = await asyncio.get_running_loop().run_in_executor(
        None, deactivate_in_the_admin_of, site.b, staff, username, user["id"]
    )
    assert response.status_code == 302, response.text[:2000]
    row = await site.wait_for_message(
        answer_id, lambda row: row["status"] != "streaming", timeout=5, what="A did not end the answer"
    )
    assert row["status"] == "cancelled"
    assert row["text"] and "".join(words).startswith(row["text"])
    assert row["stop_requested_at"] is not None
    [account] = site.sql("SELECT is_active FROM auth_user WHERE id = %s", (user["id"],))
    assert account["is_active"] is False
    deadline = time.monotonic() + 5
    while not request.get("disconnected") and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    assert request.get("disconnected"), "A's worker did not close its upstream request"
    await tab_a.close()


async def test_a_reload_that_lands_on_b_mid_answer_resumes_with_no_gap_and_no_repeat(site, upstream):
    session = site.log_in(site.create_user(), site.a)
    words = [f"w{number} " for number in range(240)]
    # Deltas faster than the flush window, so flushes coalesce while tabs subscribe.
    upstream.queue(answer(words, pause=0.012))
    tab_a = await Tab.open(site.a, session)
    conversation_id, answer_id = await start_answer(tab_a)
    await tab_a.close()  # the reload: the old socket goes, new ones land on B

    async def reload_on_b():
        tab = await Tab.open(site.b, session)
        await tab.send("chat.subscribe", conversation=conversation_id)
        frames = await tab.receive_until("message.done", message=answer_id, timeout=20)
        await tab.close()
        return frames

    reloads = []
    for _ in range(6):
        reloads.append(asyncio.create_task(reload_on_b()))
        await asyncio.sleep(0.25)
    results = await asyncio.gather(*reloads)

    final = site.message(answer_id)
    assert final["status"] == "completed"
    assert final["text"] == "".join(words)
    resumed_mid_answer = 0
    for frames in results:
        snapshots = [frame for frame in frames if frame["type"] == "message.snapshot" and frame["message"] == answer_id]
        assert len(snapshots) == 1, "a tab subscribed after the answer ended: make the answer longer"
        snapshot = snapshots[0]
        deltas = deltas_of(frames, answer_id)
        seqs = [frame["seq"] for frame in deltas]
        assert seqs == list(range(snapshot["seq"] + 1, snapshot["seq"] + 1 + len(deltas))), "a gap or a repeat"
        assert snapshot["text"] + "".join(frame["delta"] for frame in deltas) == final["text"]
        assert frames[-1]["text"] == final["text"]
        resumed_mid_answer += bool(snapshot["seq"] and deltas)
    assert resumed_mid_answer >= 3


async def test_after_a_sigkill_of_a_mid_answer_the_answer_is_interrupted_with_its_checkpoint(site, upstream):
    """Nobody sends anything after the crash: the processes reap on their own, at start-up and periodically."""
    site.restart(site.b)  # B has done nothing but serve this test's sockets
    session = site.log_in(site.create_user(), site.b)
    words = [f"part{number} " for number in range(150)]
    upstream.queue(answer(words, pause=0.1))
    tab_a = await Tab.open(site.a, session)
    conversation_id, answer_id = await start_answer(tab_a)
    tab_b = await Tab.open(site.b, session)
    await tab_b.send("chat.subscribe", conversation=conversation_id)
    await tab_b.receive_until("message.snapshot")
    await site.wait_for_message(
        answer_id, lambda row: row["checkpointed_at"] and len(row["text"]) > 20, 5, "no checkpoint with text"
    )

    site.a.kill()
    checkpoint = site.message(answer_id)  # A is dead: nothing writes this row any more
    assert checkpoint["status"] == "streaming"
    site.a.start()  # as a service manager restarts it

    row = await site.wait_for_message(
        answer_id,
        lambda row: row["status"] != "streaming",
        HEARTBEAT_TIMEOUT + 4 * HEARTBEAT_INTERVAL + 3,
        "the answer of the killed process was not marked interrupted",
    )
    assert row["status"] == "interrupted"
    assert row["text"] == checkpoint["text"]
    assert "".join(words).startswith(row["text"])
    assert row["finished_at"] is not None

    # The conversation is free again: the next message is answered, through B.
    await tab_b.send("chat.send", conversation=conversation_id, text="Again?", client_id=uuid.uuid4().hex)
    frames = await tab_b.receive_until("message.done", timeout=10)
    while frames[-1]["message"] == answer_id:
        # B reaped the answer itself (A took longer than a heartbeat timeout to start again, as on
        # a loaded machine) and told its tab first.
        assert frames[-1]["status"] == "interrupted"
        frames = await tab_b.receive_until("message.done", timeout=10)
    assert frames[-1]["status"] == "completed"
    await tab_a.close()
    await tab_b.close()


async def test_no_process_reaps_an_answer_whose_worker_is_alive(site, upstream):
    """An answer longer than twice the heartbeat timeout, while B reaps and even while B restarts."""
    session = site.log_in(site.create_user(), site.b)
    tab_b = await Tab.open(site.b, session)
    await tab_b.send("chat.send", conversation=None, text="Hi", client_id=uuid.uuid4().hex)
    await tab_b.receive_until("message.done")  # B's worker runs: it heartbeats and reaps

    words = [f"long{number} " for number in range(35)]
    upstream.queue(answer(words, pause=0.2))
    tab_a = await Tab.open(site.a, session)
    _, answer_id = await start_answer(tab_a)
    processes = site.sql("SELECT pid FROM chat_serverprocess WHERE last_seen_at > now() - interval '3 seconds'")
    assert {site.a.pid, site.b.pid} <= {row["pid"] for row in processes}
    started = time.monotonic()
    restarted = False
    while site.message(answer_id)["status"] in ("queued", "streaming"):
        if not restarted and time.monotonic() - started > HEARTBEAT_TIMEOUT:
            site.restart(site.b)  # a process starting up reaps too; it must leave this answer alone
            restarted = True
        # A guard against a hang, not a speed: a 7 s answer through a restart on a loaded machine.
        assert time.monotonic() - started < 120, "the answer did not finish"
        await asyncio.sleep(0.1)
    assert restarted
    row = site.message(answer_id)
    assert row["status"] == "completed", f"{row['status']}: {row['error_message']}"
    assert row["text"] == "".join(words)
    frames = await tab_a.receive_until("message.done", message=answer_id, timeout=5)
    assert frames[-1]["status"] == "completed"
    await tab_a.close()
    await tab_b.close()


async def test_sigterm_of_a_mid_answer_saves_it_as_interrupted_and_tells_the_tabs_on_b(site, upstream):
    session = site.log_in(site.create_user(), site.b)
    words = [f"bye{number} " for number in range(100)]
    upstream.queue(answer(words, pause=0.1))
    tab_a = await Tab.open(site.a, session)
    conversation_id, answer_id = await start_answer(tab_a)
    tab_b = await Tab.open(site.b, session)
    await tab_b.send("chat.subscribe", conversation=conversation_id)
    await tab_b.receive_until("message.snapshot")

    stopping = time.monotonic()
    await asyncio.to_thread(site.a.terminate)
    assert time.monotonic() - stopping < 10, "A took too long to stop"
    row = site.message(answer_id)
    assert row["status"] == "interrupted", "A did not save its answer before it exited"
    assert row["error_code"] == "server_shutdown"
    assert row["text"] and "".join(words).startswith(row["text"])
    frames = await tab_b.receive_until("message.done", message=answer_id, timeout=5)
    assert frames[-1]["status"] == "interrupted"
    assert frames[-1]["text"] == row["text"]
    await tab_b.close()


async def test_the_send_rate_limit_counts_sends_through_every_process(site):
    """CHAT_SENDS_PER_MINUTE is per user, whichever process each send reaches. The window slides
    (the ledger's entries of the last 60 seconds), so no minute boundary can reset it mid-test."""
    session = site.log_in(site.create_user(), site.a)
    tabs = [await Tab.open(site.a, session), await Tab.open(site.b, session)]
    for number in range(SENDS_PER_MINUTE):
        tab = tabs[number % 2]
        await tab.send("chat.send", conversation=None, text=f"Hi {number}", client_id=uuid.uuid4().hex)
        frames = await tab.receive_until("message.done")
        assert frames[-1]["status"] == "completed"
    for tab in tabs:
        await tab.send("chat.send", conversation=None, text="One too many", client_id=uuid.uuid4().hex)
        refused = await tab.receive()
        assert refused["type"] == "error"
        assert refused["code"] == "rate_limited"
    for tab in tabs:
        await tab.close()


async def test_the_daily_token_budget_counts_answers_from_every_process(site, upstream):
    session = site.log_in(site.create_user(daily_token_budget=20), site.a)
    upstream.queue(answer(["Twenty ", "tokens"], usage=usage_object(15, 5)))
    tab_a = await Tab.open(site.a, session)
    await tab_a.send("chat.send", conversation=None, text="Spend it", client_id=uuid.uuid4().hex)
    frames = await tab_a.receive_until("message.done")
    assert frames[-1]["usage"]["total_tokens"] == 20

    tab_b = await Tab.open(site.b, session)
    await tab_b.send("chat.send", conversation=None, text="And more", client_id="more")
    refused = await tab_b.receive()
    assert refused["type"] == "error"
    assert refused["code"] == "quota_exceeded"
    await tab_a.close()
    await tab_b.close()


async def test_racing_sends_through_both_processes_overspend_the_budget_by_at_most_one_answer(site, upstream):
    """Ten tabs on A and B send at once: the lock on the user's row decides them one at a time,
    across processes, so only what the budget and its reservations admit goes upstream."""
    username = site.create_user(daily_token_budget=1500)
    session = site.log_in(username, site.a)
    upstream.queue(*[answer(["A thousand tokens"], usage=usage_object(500, 500), pause=0.2)] * 10)
    tabs = [await Tab.open((site.a, site.b)[number % 2], session) for number in range(10)]
    await asyncio.gather(
        *(
            tab.send("chat.send", conversation=None, text=f"Race {number}", client_id=uuid.uuid4().hex)
            for number, tab in enumerate(tabs)
        )
    )

    async def outcome(tab):
        while True:
            frame = await tab.receive(timeout=20)
            if frame["type"] in ("error", "message.done"):
                return frame

    outcomes = await asyncio.gather(*(outcome(tab) for tab in tabs))
    answered = [frame for frame in outcomes if frame["type"] == "message.done"]
    assert {frame["code"] for frame in outcomes if frame["type"] == "error"} == {"quota_exceeded"}
    assert len(answered) == 2, [frame.get("code") or frame["status"] for frame in outcomes]
    [spent] = site.sql("SELECT sum(total_tokens) AS tokens FROM chat_usageentry WHERE username = %s", (username,))
    assert spent["tokens"] == 2000 <= 1500 + 1000
    sent = [request for request in upstream.requests if request["body"]["input"][-1]["content"].startswith("Race ")]
    assert len(sent) == 2
    for tab in tabs:
        await tab.close()


# --- Uploads in the shared bucket -------------------------------------------------------------


def upload_through(server, http, name, data):
    response = http.post(
        f"{server.url}/uploads/",
        files={"file": (name, data, "text/plain")},
        headers={"X-CSRFToken": http.cookies["csrftoken"]},
        timeout=10,
    )
    assert response.status_code == 201, response.text[:2000]
    return response.json()["id"]


def object_in_bucket(cluster, attachment_id):
    """Whether the bucket holds the upload's object, asked of the store itself."""
    try:
        cluster.s3.client().head_object(Bucket=cluster.s3.bucket, Key=f"uploads/{uuid.UUID(attachment_id).hex}")
    except botocore.exceptions.ClientError as error:
        if error.response["ResponseMetadata"]["HTTPStatusCode"] == 404:
            return False
        raise
    return True


def files_on_the_machines(cluster):
    return [path for server in (cluster.a, cluster.b) for path in local_media(server).rglob("*") if path.is_file()]


def local_media(server):
    return pathlib.Path(server.env["DJANGO_MEDIA_ROOT"])


async def wait_until(condition, what, timeout=15):
    deadline = time.monotonic() + timeout
    while not await asyncio.to_thread(condition):
        if time.monotonic() > deadline:
            pytest.fail(f"{what} within {timeout} s")
        await asyncio.sleep(0.05)


async def test_an_upload_through_a_is_served_by_b_and_deleted_through_b_from_the_bucket(site):
    username = site.create_user()
    browser = await asyncio.to_thread(site.browser, username, site.a)
    data = b"tide tables\n" * 1000
    attachment_id = await asyncio.to_thread(upload_through, site.a, browser, "tides.txt", data)
    assert await asyncio.to_thread(object_in_bucket, site, attachment_id)

    served = await asyncio.to_thread(browser.get, f"{site.b.url}/uploads/{attachment_id}/", timeout=10)
    assert served.status_code == 200 and served.content == data
    assert served.headers["X-Content-Type-Options"] == "nosniff"
    assert site.s3.endpoint_url.split("//", 1)[1] not in " ".join(served.headers.values())
    stranger = await asyncio.to_thread(site.browser, site.create_user(), site.b)
    refused = await asyncio.to_thread(stranger.get, f"{site.b.url}/uploads/{attachment_id}/", timeout=10)
    assert refused.status_code == 404

    deleted = await asyncio.to_thread(
        browser.delete,
        f"{site.b.url}/uploads/{attachment_id}/",
        headers={"X-CSRFToken": browser.cookies["csrftoken"]},
        timeout=10,
    )
    assert deleted.status_code == 200, deleted.text[:2000]
    assert site.sql("SELECT id FROM chat_attachment WHERE id = %s", (attachment_id,)) == []
    assert not await asyncio.to_thread(object_in_bucket, site, attachment_id)
    assert files_on_the_machines(site) == []


async def test_the_servers_sweep_stale_unsent_uploads_from_the_bucket(site):
    """Both processes sweep every UPLOAD_SWEEP_SECONDS: an upload aged past CHAT_UPLOAD_UNSENT_HOURS
    goes, row and object, wherever it was uploaded, and a fresh one stays."""
    username = site.create_user()
    browser = await asyncio.to_thread(site.browser, username, site.a)
    stale = await asyncio.to_thread(upload_through, site.a, browser, "stale.txt", b"stale")
    fresh = await asyncio.to_thread(upload_through, site.b, browser, "fresh.txt", b"fresh")
    site.sql("UPDATE chat_attachment SET created_at = now() - interval '25 hours' WHERE id = %s", (stale,))

    await wait_until(
        lambda: not site.sql("SELECT id FROM chat_attachment WHERE id = %s", (stale,)),
        "no process swept the stale upload's row",
    )
    await wait_until(lambda: not object_in_bucket(site, stale), "the stale upload's object is still in the bucket")
    assert await asyncio.to_thread(object_in_bucket, site, fresh)
    assert site.sql("SELECT id FROM chat_attachment WHERE id = %s", (fresh,)) != []


# --- Continue across processes ----------------------------------------------------------------


async def test_a_continuation_followed_from_b_starts_with_the_text_it_goes_on_from(site, upstream):
    """A generates the continuation; B resumes it from the Redis snapshot, which the relay starts
    with the earlier version's text, so B's tab shows that text and what follows, never less."""
    session = site.log_in(site.create_user(), site.a)
    tab_a = await Tab.open(site.a, session)
    upstream.queue(answer(["Cut ", "short"], terminal="incomplete"))
    await tab_a.send("chat.send", conversation=None, text="Begin", client_id=uuid.uuid4().hex)
    first = await tab_a.receive_until("message.done")
    conversation_id = first[0]["conversation"]["id"]
    original = assistant_message(first)["id"]

    gate = Gate()
    steps = answer([" and", " then"])
    end_of_deltas = next(
        index for index, step in enumerate(steps) if isinstance(step, bytes) and b"response.output_text.done" in step
    )
    steps.insert(end_of_deltas, gate)
    upstream.queue(steps)
    await tab_a.send("chat.continue", message=original, client_id=uuid.uuid4().hex)
    frames_a = await tab_a.receive_until("message.created")
    continued = frames_a[-1]["message"]["id"]
    while "".join(frame["delta"] for frame in deltas_of(frames_a, continued)) != " and then":
        frames_a.append(await tab_a.receive())

    tab_b = await Tab.open(site.b, session)
    await tab_b.send("chat.subscribe", conversation=conversation_id)
    frames_b = await tab_b.receive_until("message.snapshot", message=continued)
    snapshot = frames_b[-1]
    assert snapshot["text"].startswith("Cut short"), snapshot
    gate.event.set()
    frames_b += await tab_b.receive_until("message.done", message=continued)
    rebuilt = snapshot["text"] + "".join(frame["delta"] for frame in deltas_of(frames_b, continued))
    assert rebuilt == frames_b[-1]["text"] == "Cut short and then"
    assert site.message(continued)["text"] == "Cut short and then"
    assert site.message(original)["text"] == "Cut short"
    await tab_a.close()
    await tab_b.close()
