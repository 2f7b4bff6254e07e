"""What the answer threads spend per answer, by phase: `python -m bench.answerpath [options]`.

One process, no daphne, no websocket: the real StreamWorker with production settings
(DJANGO_DEBUG=0, an SQLite file database, the default checkpoint interval) generates answers
from the timed upstream (bench/timed_upstream.py, a process of its own, so its CPU is not
counted), each a new conversation's first answer of `--deltas` deltas at `--rate` per second,
`--concurrency` at a time. The sends are stored before the clock starts: they are the send
verb's cost, not the answer's. The answers' events go to the relay of an event loop in a thread
of this process, where one follower per conversation counts the frames.

Printed per phase, on the thread that runs it (time.thread_time, which a loaded machine inflates
far less than wall time): CPU per answer, its share per delta, and the SQL statements per answer
by kind. The phases are the methods the answer's work goes through, wrapped here; a phase's time
excludes the phases it calls:

- claim: AnswerJob.claim (the input fitted to the context and the one UPDATE);
- open: AnswerJob.open (the upstream request up to its status line);
- stream: AnswerJob.apply (reading and applying the events: the per-delta path);
- checkpoint: AnswerJob.write_checkpoint, or the round's checkpoint_values and
  Message.objects.checkpoint_round where they exist (on the checkpointer's thread);
- end: AnswerJob.finish and save_final, without the two below;
- end: final save: Message.objects.finish_answer (the row, the ledger, in one transaction);
- end: done frame: protocol.done_event (the message.done frame and the owner's budget);
- title: TitleWriter.write (the model's title after a first answer, on the titles' thread);
- run: AnswerJob.run's own work (connection checks before and after).

The process CPU per answer and per delta (all threads: the loop's relay and followers, the
collector, the sends excluded) is printed beside them. `--profile` adds a cProfile of every
phase, merged over the answers' threads (the profiler inflates what it measures: read its shares,
not its times). `--json` prints the figures as one JSON line, for A/B scripts.
"""

import argparse
import asyncio
import collections
import contextlib
import cProfile
import functools
import io
import json
import os
import pstats
import sys
import tempfile
import threading
import time
from pathlib import Path

from bench.run import Upstream
from bench.site import bench_env
from bench.timed_upstream import tag

TITLE = "Benchmark conversation about markers"


class Phases:
    """CPU time, calls and SQL statements per phase, kept per thread; see the module docstring."""

    def __init__(self, profile=False):
        self.cpu = collections.Counter()
        self.calls = collections.Counter()
        self.statements = collections.defaultdict(collections.Counter)
        self.profiles = [] if profile else None
        self.local = threading.local()
        self.lock = threading.Lock()

    def wrap(self, owner, attribute, phase):
        """Time `owner.attribute` (a function of a class, or a bound method of an instance) as `phase`."""
        original = getattr(owner, attribute)

        @functools.wraps(original)
        def timed(*args, **kwargs):
            return self.run(phase, original, args, kwargs)

        setattr(owner, attribute, timed)

    def run(self, phase, function, args, kwargs):
        stack = self.local.__dict__.setdefault("stack", [])
        profiler = None
        if not stack and self.profiles is not None:
            profiler = cProfile.Profile(time.thread_time)  # CPU, not the waits for the upstream
            profiler.enable()
        frame = [phase, time.thread_time(), 0.0]  # the phase, its start, its callees' time
        stack.append(frame)
        try:
            return function(*args, **kwargs)
        finally:
            elapsed = time.thread_time() - frame[1]
            stack.pop()
            if stack:
                stack[-1][2] += elapsed
            if profiler is not None:
                profiler.disable()
            with self.lock:
                self.cpu[phase] += elapsed - frame[2]
                self.calls[phase] += 1
                if profiler is not None:
                    self.profiles.append(profiler)

    def count_statement(self, execute, sql, params, many, context):
        stack = getattr(self.local, "stack", None)
        phase = stack[-1][0] if stack else "other"
        with self.lock:
            self.statements[phase][sql.split(None, 1)[0].upper()] += 1
        return execute(sql, params, many, context)

    def install(self, sender, connection, **kwargs):
        if self.count_statement not in connection.execute_wrappers:
            connection.execute_wrappers.append(self.count_statement)


def instrument(phases):
    from django.db.backends.signals import connection_created

    from chat import protocol
    from chat.answering.job import AnswerJob
    from chat.answering.titles import TitleWriter
    from chat.models import Message

    for attribute, phase in (
        ("run", "run"),
        ("claim", "claim"),
        ("open", "open"),
        ("apply", "stream"),
        ("write_checkpoint", "checkpoint"),
        ("finish", "end"),
        ("save_final", "end"),
    ):
        phases.wrap(AnswerJob, attribute, phase)
    # A round of checkpoints written at once, where the checkpointer does so (the branch of
    # issue 19's round; before it each answer's went through write_checkpoint).
    if hasattr(AnswerJob, "checkpoint_values"):
        phases.wrap(AnswerJob, "checkpoint_values", "checkpoint")
    if hasattr(Message.objects, "checkpoint_round"):
        phases.wrap(Message.objects, "checkpoint_round", "checkpoint")
    phases.wrap(TitleWriter, "write", "title")
    phases.wrap(Message.objects, "finish_answer", "end: final save")
    phases.wrap(protocol, "done_event", "end: done frame")
    connection_created.connect(phases.install, weak=False)


class Followers:
    """An event loop in a thread of its own, with one counting follower per conversation."""

    def __init__(self, runtime):
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="bench-loop", daemon=True)
        self.thread.start()
        self.relay = runtime.relay_for(self.loop)
        self.frames = collections.Counter()
        self.done = 0

    def follow(self, group):
        from chat.follower import Follower

        async def send(text):
            self.frames[json.loads(text)["type"]] += 1

        async def join():
            follower = Follower(self.relay, send, None)
            await follower.join(group, group)
            await follower.release()

        asyncio.run_coroutine_threadsafe(join(), self.loop).result(10)

    def close(self):
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


def store_sends(options, users, worker_id):
    from chat.models import Conversation

    sends = []
    for number in range(options.answers):
        spec = {"title": TITLE} if options.titles else {}
        text = tag(f"answer-{number}", options.deltas, options.rate, pair=False, **spec)
        user = users[number % len(users)]
        sends.append(Conversation.objects.send(user, None, text, client_id=f"bench-{number}", worker_id=worker_id))
    return sends


def run_answers(options, worker, followers, sends):
    """Every answer to its end, `concurrency` at a time; then the titles' thread drained."""
    for start in range(0, len(sends), options.concurrency):
        wave = sends[start : start + options.concurrency]
        jobs = [worker.submit(stored.answer, stored.group, followers.loop, stored.answer_input) for stored in wave]
        for job in jobs:
            if not job.released.wait(300):
                raise RuntimeError(f"answer {job.message_id} did not end")
    worker.titles.pool.submit(lambda: None).result(300)


def measure(options):
    import django

    django.setup()
    from django.contrib.auth import get_user_model
    from django.core.management import call_command
    from django.db import connections

    from chat import runtime as runtime_module
    from chat.models import Conversation, Message

    call_command("migrate", verbosity=0)
    users = [get_user_model().objects.create_user(f"bench-{number}") for number in range(options.users)]
    phases = Phases(profile=options.profile)
    instrument(phases)
    runtime = runtime_module.Runtime()
    runtime_module.install(runtime)
    worker = runtime.start_worker(threads=options.concurrency)
    followers = Followers(runtime)
    sends = store_sends(options, users, worker.id)
    for stored in sends:
        followers.follow(stored.group)
    connections.close_all()
    phases.statements.clear()
    began_cpu, began = time.process_time(), time.monotonic()
    run_answers(options, worker, followers, sends)
    cpu, wall = time.process_time() - began_cpu, time.monotonic() - began
    ended = collections.Counter(
        Message.objects.filter(pk__in=[s.answer for s in sends]).values_list("status", flat=True)
    )
    titled = Conversation.objects.filter(title=TITLE).count()
    runtime.close()
    followers.close()
    return {
        "answers": options.answers,
        "deltas": options.deltas,
        "concurrency": options.concurrency,
        "titles": options.titles,
        "wall_s": wall,
        "process_cpu_ms_per_answer": cpu / options.answers * 1e3,
        "process_cpu_us_per_delta": cpu / (options.answers * options.deltas) * 1e6,
        "phases": {
            phase: {
                "calls": phases.calls[phase],
                "cpu_ms_per_answer": phases.cpu[phase] / options.answers * 1e3,
                "statements_per_answer": sum(phases.statements[phase].values()) / options.answers,
                "statement_kinds": dict(phases.statements[phase]),
            }
            for phase in sorted(set(phases.cpu) | set(phases.statements), key=phase_order)
        },
        "statuses": dict(ended),
        "titled": titled,
        "frames": dict(followers.frames),
        "profile": profile_text(phases.profiles, options.profile_lines) if options.profile else None,
    }


ORDER = ("run", "claim", "open", "stream", "checkpoint", "end", "end: final save", "end: done frame", "title")


def phase_order(phase):
    return ORDER.index(phase) if phase in ORDER else len(ORDER)


def profile_text(profiles, lines):
    if not profiles:
        return ""
    out = io.StringIO()
    stats = pstats.Stats(profiles[0], stream=out)
    for profiler in profiles[1:]:
        stats.add(profiler)
    stats.sort_stats("tottime").print_stats(lines)
    stats.sort_stats("cumulative").print_stats(lines)
    return out.getvalue()


def report(result):
    answers, deltas = result["answers"], result["deltas"]
    lines = [
        f"{answers} answers of {deltas} deltas, {result['concurrency']} at a time, titles "
        f"{'on' if result['titles'] else 'off'}: {result['wall_s']:.1f} s wall; statuses {result['statuses']}, "
        f"titled {result['titled']}; frames {result['frames']}",
        "",
        "| phase | calls | CPU ms / answer | µs / delta | statements / answer | kinds |",
        "|---|---:|---:|---:|---:|---|",
    ]
    total_cpu = total_statements = 0.0
    for phase, figures in result["phases"].items():
        total_cpu += figures["cpu_ms_per_answer"]
        total_statements += figures["statements_per_answer"]
        kinds = ", ".join(f"{kind} {count / answers:g}" for kind, count in sorted(figures["statement_kinds"].items()))
        lines.append(
            f"| {phase} | {figures['calls']} | {figures['cpu_ms_per_answer']:.2f} | "
            f"{figures['cpu_ms_per_answer'] * 1e3 / deltas:.1f} | {figures['statements_per_answer']:g} | {kinds} |"
        )
    lines.append(f"| phases in all | | {total_cpu:.2f} | {total_cpu * 1e3 / deltas:.1f} | {total_statements:g} | |")
    lines.append(
        f"| process (every thread) | | {result['process_cpu_ms_per_answer']:.2f} | "
        f"{result['process_cpu_us_per_delta']:.1f} | | |"
    )
    text = "\n".join(lines) + "\n"
    if result["profile"]:
        text += "\n" + result["profile"]
    return text


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--answers", type=int, default=50)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--deltas", type=int, default=90)
    parser.add_argument("--rate", type=float, default=30.0)
    parser.add_argument("--users", type=int, default=10)
    parser.add_argument("--titles", action="store_true", help="the model's title after each first answer")
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--profile-lines", type=int, default=30)
    parser.add_argument("--json", action="store_true")
    options = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="answerpath-") as folder, Upstream() as upstream:
        variables = {"CHAT_HEARTBEAT_INTERVAL": "3600", "CHAT_GENERATED_TITLES": "1" if options.titles else "0"}
        os.environ.update(bench_env(Path(folder), upstream.url, **variables))
        result = measure(options)
    with contextlib.suppress(BrokenPipeError):
        sys.stdout.write(json.dumps(result) + "\n" if options.json else report(result))


if __name__ == "__main__":
    main()
