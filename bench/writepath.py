"""What a websocket frame costs from the relay to the socket: `python -m bench.writepath [options]`.

A real `daphne chatsite.asgi:application` (production settings, SQLite), SOCKETS logged-in tabs
each following a conversation of its own with `chat.subscribe`, and a thread inside the server
(`python -m bench.writepath serve`, daphne's command line plus that thread) that publishes FRAMES
delta events per conversation at RATE per second into the process's relay, spread evenly over
each period as answer threads publish. No upstream, no answer threads, no database per frame:
what is measured is the relay's delivery round, the follower, the consumer's send, daphne's
reply, autobahn's framing and Twisted's write, for every frame of every socket.

Figures: the server's CPU time per frame from /proc (all threads, and its event loop thread
alone, the one that writes), read when every tab has subscribed and when every tab has every
frame; the frames lost, repeated or out of order (by seq, per tab); publish -> arrival latency
(one clock: both ends run on this machine). `--strace` also counts the server's system calls
per frame (strace -c on the event loop thread, which slows it: a separate run). Process CPU is
robust to a loaded machine, unlike latencies; the same command runs against another checkout for
an A/B.
"""

import argparse
import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from bench.clients import WebsocketTab
from bench.profile import Profile
from bench.site import CLOCK_TICKS, bench_env
from tests.services import Daphne, manage

SERVER_MODULE = "bench.writepath"


# --- inside the server ---------------------------------------------------------------------------


def publish_all(loop, groups, frames, rate):
    """Publish `frames` delta events to each of `groups` ({group: message id}) at `rate` per
    second per group, the groups' events spread evenly over each period."""
    from chat import protocol, runtime

    relay = runtime.current().relay_for(loop)
    makers = [(group, protocol.DeltaEvents(message_id)) for group, message_id in groups.items()]
    period = 1 / rate
    step = period / len(makers)
    began = time.monotonic() + 0.05
    for index in range(frames):
        for number, (group, events) in enumerate(makers):
            due = began + index * period + number * step
            wait = due - time.monotonic()
            if wait > 0.0005:
                time.sleep(wait)
            relay.publish(group, events.event(index + 1, "text", f"{index}@{time.monotonic_ns()} "))


def serve():
    """daphne's command line, plus: SIGUSR1 starts the publishing thread (on the reactor's
    loop, for the groups in the file named by WRITEPATH_GROUPS)."""
    from daphne.cli import CommandLineInterface

    def start(signal_number, frame):
        groups = json.loads(Path(os.environ["WRITEPATH_GROUPS"]).read_text())
        frames, rate = int(os.environ["WRITEPATH_FRAMES"]), float(os.environ["WRITEPATH_RATE"])
        loop = asyncio.get_event_loop()  # the handler runs on the reactor's thread
        threading.Thread(target=publish_all, args=(loop, groups, frames, rate), daemon=True).start()

    signal.signal(signal.SIGUSR1, start)
    CommandLineInterface().run(sys.argv[2:])


class Server(Daphne):
    def command(self):
        return [sys.executable, "-m", SERVER_MODULE, "serve", "-b", "127.0.0.1", "-p", str(self.port)] + [
            "chatsite.asgi:application"
        ]


# --- the measuring side --------------------------------------------------------------------------


class CountingTab(WebsocketTab):
    """A tab that counts its conversation's delta frames by seq, and stamps their arrival."""

    def __init__(self, *args):
        super().__init__(*args)
        self.last_seq = 0
        self.received = 0
        self.lost = self.repeated = 0
        self.latencies_ns = []
        self.expected = 0
        self.complete = asyncio.get_running_loop().create_future()

    def on_text(self, payload, arrived_ns):
        if not payload.startswith(b'{"type": "message.delta"'):
            return super().on_text(payload, arrived_ns)
        frame = json.loads(payload)
        seq = frame["seq"]
        if seq <= self.last_seq:
            self.repeated += 1
            return
        self.lost += seq - self.last_seq - 1
        self.last_seq = seq
        self.received += 1
        self.latencies_ns.append(arrived_ns - int(frame["delta"].split("@")[1]))
        if seq >= self.expected and not self.complete.done():
            self.complete.set_result(None)


def prepare(env, sockets):
    """`sockets` users, each with a session and one conversation; [(cookie, conversation id, group)]."""
    manage(env, "migrate", "--noinput")
    script = f"""
import json
from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY, get_user_model
from django.contrib.sessions.backends.db import SessionStore
from django.db import transaction
from chat.models import Conversation
rows = []
with transaction.atomic():
    for number in range({sockets}):
        user, _ = get_user_model().objects.get_or_create(username=f"writepath-{{number}}")
        session = SessionStore()
        session[SESSION_KEY] = str(user.pk)
        session[BACKEND_SESSION_KEY] = "django.contrib.auth.backends.ModelBackend"
        session[HASH_SESSION_KEY] = user.get_session_auth_hash()
        session.create()
        conversation = Conversation.objects.create(owner=user, model="bench", title="write path")
        rows.append((session.session_key, str(conversation.id), conversation.group_name))
print("ROWS " + json.dumps(rows))
"""
    output = manage(env, "shell", "-c", script)
    line = next(line for line in output.splitlines() if line.startswith("ROWS "))
    return json.loads(line.removeprefix("ROWS "))


def cpu_seconds(pid, thread=None):
    """utime + stime of the process (or of one of its threads), from /proc."""
    path = f"/proc/{pid}/task/{thread}/stat" if thread else f"/proc/{pid}/stat"
    fields = Path(path).read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def percentile(values, share):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))] if ordered else 0


async def measure(server, rows, frames, rate, strace, profile=None):
    tabs = []
    for cookie, conversation, _ in rows:
        tab = await CountingTab.open("127.0.0.1", server.port, f"sessionid={cookie}")
        tab.expected = frames
        tab.send_json({"type": "chat.subscribe", "conversation": conversation})
        tabs.append(tab)
    for tab in tabs:
        await tab.expect("conversation.subscribed")
    tracer = None
    if strace:
        summary = Path(server.log_path).with_suffix(".strace")
        tracer = subprocess.Popen(
            ["strace", "-c", "-o", str(summary), "-p", str(server.pid)], stderr=subprocess.DEVNULL
        )
        await asyncio.sleep(1.0)  # attached
    profiler = Profile(server.pid, profile).__enter__() if profile else None
    cpu_before, loop_before = cpu_seconds(server.pid), cpu_seconds(server.pid, server.pid)
    wall = time.monotonic()
    os.kill(server.pid, signal.SIGUSR1)
    timeout = frames / rate * 4 + 30
    done, _ = await asyncio.wait([tab.complete for tab in tabs], timeout=timeout)
    if profiler is not None:
        profiler.__exit__()
    await asyncio.sleep(0.2)  # whatever would still arrive (a repeat) is counted
    wall = time.monotonic() - wall
    cpu, loop_cpu = cpu_seconds(server.pid) - cpu_before, cpu_seconds(server.pid, server.pid) - loop_before
    calls = None
    if tracer is not None:
        tracer.send_signal(signal.SIGINT)
        tracer.wait(30)
        calls = strace_calls(summary)
    for tab in tabs:
        tab.close()
    total = frames * len(tabs)
    latencies = [ns / 1e6 for tab in tabs for ns in tab.latencies_ns]
    result = {
        "sockets": len(tabs),
        "frames_per_socket": frames,
        "rate": rate,
        "frames": sum(tab.received for tab in tabs),
        "incomplete_sockets": len(tabs) - len(done),
        "lost": sum(tab.lost for tab in tabs) + sum(frames - tab.last_seq for tab in tabs),
        "repeated": sum(tab.repeated for tab in tabs),
        "wall_s": round(wall, 2),
        "server_cpu_us_per_frame": round(cpu / total * 1e6, 1),
        "loop_thread_cpu_us_per_frame": round(loop_cpu / total * 1e6, 1),
        "latency_ms_p50": round(statistics.median(latencies), 2) if latencies else None,
        "latency_ms_p99": round(percentile(latencies, 0.99), 2),
    }
    if calls is not None:
        result["syscalls_per_frame"] = {name: round(count / total, 2) for name, count in calls.items()}
    return result


def strace_calls(path):
    """{syscall: calls} from an `strace -c` summary, the busiest first."""
    calls = {}
    for line in Path(path).read_text().splitlines():
        parts = line.split()
        if len(parts) >= 5 and parts[0].replace(".", "").isdigit() and parts[-1] != "total":
            calls[parts[-1]] = int(parts[3])
    return dict(sorted(calls.items(), key=lambda item: -item[1])[:8])


def main():
    if sys.argv[1:2] == ["serve"]:
        serve()
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sockets", type=int, default=50)
    parser.add_argument("--frames", type=int, default=300, help="frames per socket")
    parser.add_argument("--rate", type=float, default=30.0, help="frames per second per socket")
    parser.add_argument("--strace", action="store_true", help="count the server's system calls (slows it)")
    parser.add_argument("--profile", help="write py-spy's raw stacks of the server to this file")
    options = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="writepath-") as folder:
        env = bench_env(folder, "http://127.0.0.1:9/v1")
        rows = prepare(env, options.sockets)
        groups = Path(folder) / "groups.json"
        groups.write_text(
            json.dumps({group: f"00000000-0000-4000-8000-{number:012d}" for number, (_, _, group) in enumerate(rows)})
        )
        env = {**env, "WRITEPATH_GROUPS": str(groups), "WRITEPATH_FRAMES": str(options.frames)}
        env["WRITEPATH_RATE"] = str(options.rate)
        server = Server("writepath", env, folder).start(60)
        try:
            result = asyncio.run(measure(server, rows, options.frames, options.rate, options.strace, options.profile))
        finally:
            server.terminate()
    sys.stdout.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
