"""CPU per delta of the cross-process path alone: `python -m bench.redispath [ANSWERS] [DELTAS] [RATE]`.

No daphne, no database, no upstream: ANSWERS threads add DELTAS deltas each at RATE per second
(30 by default, as the relay benchmark's upstream) to answer jobs whose relay (process A's)
publishes them through a real redis-server to a second relay (process B's) on the same loop;
each conversation has one follower on each relay (the sender's tab on A, and the follower on B),
whose socket's send only counts. (Before rounds were routed to per-relay inboxes, A also heard
its own batches back wherever its sender's tab followed: `--no-echo` leaves that tab out.) CHAT_FLUSH_INTERVAL=0:
every delta is a frame. Process CPU time (A and B together) and redis-server's per delta relayed
to B: robust to a loaded machine, unlike latencies, and the same script runs against another
checkout for an A/B (run it with that checkout as the working directory). `--no-hiredis` hides
the hiredis parser from redis-py, to measure without it.
"""

import asyncio
import json
import os
import sys
import threading
import time
import types
import uuid

if "--no-hiredis" in sys.argv:
    sys.argv.remove("--no-hiredis")
    sys.modules["hiredis"] = None  # redis-py then finds no hiredis and uses its Python parser

ECHO = 0  # 1 with --no-echo: no follower on A
if "--no-echo" in sys.argv:
    sys.argv.remove("--no-echo")
    ECHO = 1

# With --calls, also the Python function calls per delta on the loop's thread (where both relays'
# Redis work runs), counted by cProfile: a measure of work that a loaded machine does not change.
CALLS = "--calls" in sys.argv
if CALLS:
    sys.argv.remove("--calls")
# With --round=N, no threads and no pacing: the loop adds one delta to each of N answers at a time
# and waits for them at B, so that every round holds N deltas whatever the machine's load.
ROUND = next((int(arg.split("=", 1)[1]) for arg in sys.argv if arg.startswith("--round=")), 0)
sys.argv = [arg for arg in sys.argv if not arg.startswith("--round=")]

# The checkout measured is the working directory's; this script's own folder (bench/, whose
# profile.py would stand for the standard library's) is left off the path.
sys.path[:] = [os.getcwd(), *(path for path in sys.path if path != os.path.dirname(os.path.abspath(__file__)))]

import cProfile  # noqa: E402
import pstats  # noqa: E402

os.environ["CHAT_FLUSH_INTERVAL"] = "0"
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "chatsite.settings")


def feed(job, deltas, rate):
    start = time.monotonic()
    for index in range(deltas):
        pause = start + index / rate - time.monotonic()
        if pause > 0:
            time.sleep(pause)
        job.add("text", f"{index}@{time.monotonic_ns()} ")


async def measure(answers, deltas, rate, redis_pid):
    from bench.site import cpu_seconds
    from chat.answering.job import AnswerJob
    from chat.follower import Follower
    from chat.relay import Relay

    loop = asyncio.get_running_loop()
    relay_a, relay_b = Relay(loop), Relay(loop)
    received = [0]
    waiting = {}  # the count of deltas at B that ends a round -> its future

    async def on_b(text):
        received[0] += 1
        if received[0] in waiting:
            waiting.pop(received[0]).set_result(None)

    async def in_rounds():
        for index in range(deltas):
            for start in range(0, len(jobs), ROUND):
                these = jobs[start : start + ROUND]
                arrived = waiting[received[0] + len(these)] = loop.create_future()
                for job in these:
                    job.add("text", f"{index}@{time.monotonic_ns()} ")
                await arrived

    async def on_a(text):
        pass

    runtime = types.SimpleNamespace(relay_for=lambda loop: relay_a)
    worker = types.SimpleNamespace(runtime=runtime, checkpointer=types.SimpleNamespace(request=lambda job: None))
    jobs = []
    for _ in range(answers):
        group, conversation = f"bench-{uuid.uuid4().hex}", uuid.uuid4()
        for relay, send in ((relay_a, on_a), (relay_b, on_b))[ECHO:]:
            follower = Follower(relay, send, None)
            await follower.join(group, conversation)
            await follower.release()
        jobs.append(AnswerJob(worker, str(uuid.uuid4()), group, loop))
    await asyncio.sleep(0.5)  # every subscription confirmed
    profile = cProfile.Profile() if CALLS else None
    if profile is not None:
        profile.enable()
    began, redis_began, wall = time.process_time(), cpu_seconds(redis_pid), time.monotonic()
    if ROUND:
        await in_rounds()
    else:
        for job in jobs:
            threading.Thread(target=feed, args=(job, deltas, rate)).start()
    while received[0] < answers * deltas and time.monotonic() - wall < 120:
        await asyncio.sleep(0.005)
    cpu, redis_cpu = time.process_time() - began, cpu_seconds(redis_pid) - redis_began
    calls = {}
    if profile is not None:
        profile.disable()
        total = sum(entry[0] for entry in pstats.Stats(profile).stats.values())
        calls = {"loop_calls_per_delta": round(total / (answers * deltas), 1)}
    return {
        **calls,
        "answers": answers,
        "deltas": answers * deltas,
        "received_on_b": received[0],
        "seconds": round(time.monotonic() - wall, 2),
        "cpu_us_per_delta": round(cpu / (answers * deltas) * 1e6, 1),
        "redis_server_us_per_delta": round(redis_cpu / (answers * deltas) * 1e6, 1),
    }


def main():
    answers = int(sys.argv[1]) if len(sys.argv) > 1 else 50
    deltas = int(sys.argv[2]) if len(sys.argv) > 2 else 90
    rate = float(sys.argv[3]) if len(sys.argv) > 3 else 30.0
    from tests.services import running_redis

    with running_redis() as redis:
        os.environ["REDIS_URL"] = redis.url
        import django

        django.setup()
        result = asyncio.run(measure(answers, deltas, rate, redis.process.pid))
    sys.stdout.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
