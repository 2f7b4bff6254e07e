"""CPU per delta of the streaming hot path in one process: `python -m bench.hotpath [ANSWERS] [DELTAS]`.

No network, no database, no daphne: upstream SSE bytes -> ResponseStream (SSE framing, JSON, the
key scrubber, typed events) -> Reading -> AnswerJob.add (buffer, delta event) -> Relay (publish,
loop wake-ups, rounds) -> Follower -> a socket's send that only counts. ANSWERS threads feed
DELTAS deltas each as fast as they can, with CHAT_FLUSH_INTERVAL=0 (every delta a frame, as most
deltas of a 30/s stream are). Process CPU time over all of it, per delta: robust to a loaded
machine, unlike latencies, and the same script runs against an older checkout for an A/B.
"""

import asyncio
import json
import os
import sys
import threading
import time
import types
import uuid

os.environ["CHAT_FLUSH_INTERVAL"] = "0"
os.environ.pop("REDIS_URL", None)
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "chatsite.settings")

import django  # noqa: E402

django.setup()

from chat.answering.job import AnswerJob  # noqa: E402
from chat.follower import Follower  # noqa: E402
from chat.relay import Relay  # noqa: E402
from chat.upstream.client import ResponseStream  # noqa: E402
from chat.upstream.events import Scrubber  # noqa: E402


def sse_events(deltas):
    """The upstream's bytes of one answer, one event per read, as the timed upstream writes them."""
    events = []
    for index in range(deltas):
        event = {
            "type": "response.output_text.delta",
            "item_id": "msg_1",
            "output_index": 0,
            "content_index": 0,
            "delta": f"{index}@{time.monotonic_ns()} ",
            "sequence_number": index + 3,
        }
        events.append(f"event: {event['type']}\ndata: {json.dumps(event)}\n\n".encode())
    return events


class Body:
    def __init__(self, chunks):
        self.raw = self
        self.chunks = iter(chunks)

    def read1(self, size, decode_content=True):
        return next(self.chunks, b"")

    def close(self):
        pass


def feed(job, chunks):
    try:
        for event in ResponseStream(Body(chunks), 60, Scrubber("sk-bench-key"))._events():
            job.reading.apply(event)
    except Exception:  # the body ends without a terminal event: the deltas are what counts
        pass


async def measure(answers, deltas):
    loop = asyncio.get_running_loop()
    relay = Relay(loop)
    sent = [0]

    async def send(text):
        sent[0] += 1

    runtime = types.SimpleNamespace(relay_for=lambda loop: relay)
    worker = types.SimpleNamespace(runtime=runtime, checkpointer=types.SimpleNamespace(request=lambda job: None))
    jobs = []
    for number in range(answers):
        follower = Follower(relay, send, None)
        await follower.join(f"group-{number}", uuid.uuid4())
        await follower.release()
        jobs.append(AnswerJob(worker, str(uuid.uuid4()), f"group-{number}", loop))
    bodies = [sse_events(deltas) for _ in jobs]
    began, wall = time.process_time(), time.monotonic()
    threads = [threading.Thread(target=feed, args=pair) for pair in zip(jobs, bodies, strict=True)]
    for thread in threads:
        thread.start()
    while (
        sent[0] < answers * deltas or any(thread.is_alive() for thread in threads)
    ) and time.monotonic() - wall < 120:
        await asyncio.sleep(0.005)
    cpu = time.process_time() - began
    return {
        "answers": answers,
        "deltas": answers * deltas,
        "frames": sent[0],
        "cpu_us_per_delta": cpu / (answers * deltas) * 1e6,
    }


def main():
    answers = int(sys.argv[1]) if len(sys.argv) > 1 else 50
    deltas = int(sys.argv[2]) if len(sys.argv) > 2 else 400
    sys.stdout.write(json.dumps(asyncio.run(measure(answers, deltas))) + "\n")


if __name__ == "__main__":
    main()
