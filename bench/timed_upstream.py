"""A timed Open Responses upstream: streams N deltas at R per second, each stamped when emitted.

Run as its own process (`python -m bench.timed_upstream`), so that its timers and writes do not
share an interpreter with the clients that measure the site: it prints `PORT <n>` once it listens.

A request names its answer in the last user message: `BENCH {"id": ..., "n": ..., "rate": ...}`
(see `tag()`). With `"pair": true` the answer has two readers: the site (a normal request) and a
direct client (header `X-Bench-Role: direct`) reading the same upstream. The stream starts once
both are connected, and every event is written to both connections at the same moment, so the
two arrivals of one delta can be subtracted. Options of the tag:

- `n`, `rate`: deltas and deltas per second (the schedule is absolute: delta i goes out at
  start + i / rate, whatever the previous writes cost);
- `body`: `markers` (each delta is `"<i>@<monotonic ns> "`, the emission time in the text itself)
  or `markdown` (slices of a generated Markdown document of `chars` characters);
- `title`: the words a later request for the same answer gets at once. A site that names a
  conversation after its first answer asks the model again with that answer in its input, tag
  and all (chat/answering/titles.py): without `title`, that request would play the answer again.

The direct reader also gets a `bench.meta` event first: when the site's request arrived and when
the upstream started answering it (CLOCK_MONOTONIC, the same clock in every process here).
"""

import argparse
import asyncio
import json
import logging
import re
import sys
import time

logger = logging.getLogger(__name__)

TAG = re.compile(r"BENCH (\{.*?\})")
PAIR_TIMEOUT = 120.0


def tag(answer_id, n, rate, body="markers", pair=True, **extra):
    """The user message text that asks the timed upstream for an answer."""
    return "BENCH " + json.dumps({"id": answer_id, "n": n, "rate": rate, "body": body, "pair": pair, **extra})


def marker_delta(index, emitted_ns):
    return f"{index}@{emitted_ns} "


MARKER = re.compile(r"(\d+)@(\d+) ")


def markdown_document(chars):
    """A deterministic Markdown document of about `chars` characters: headings, paragraphs,
    lists, tables, quotes and fenced code, the mix a long model answer has."""
    words = (
        "the relay keeps every delta in order while the worker coalesces fast tokens into one frame and "
        "the browser renders only the open block again"
    ).split()
    sections, section = [], 0
    total = 0
    while total < chars:
        section += 1
        prose = " ".join(words[(section + k) % len(words)] for k in range(60))
        parts = [
            f"## Section {section}: streaming notes\n\n",
            f"{prose.capitalize()}, with **bold**, *emphasis*, `inline code` and a [link](https://example.com/{section}).\n\n",
            "".join(f"- item {section}.{k}: {' '.join(words[k : k + 6])}\n" for k in range(5)) + "\n",
            "```python\n"
            + "".join(
                f"def step_{section}_{k}(value):\n    return value * {k} + {section}  # {words[k]}\n" for k in range(6)
            )
            + "```\n\n",
            "| name | value | note |\n|---|---:|---|\n"
            + "".join(f"| row {k} | {section * k} | {words[k]} |\n" for k in range(4))
            + "\n",
            f"> {' '.join(words[:20])}.\n\n",
            "1. first\n2. second with `code`\n3. third\n\n",
        ]
        for part in parts:
            sections.append(part)
            total += len(part)
    return "".join(sections)[:chars]


def split_evenly(text, pieces):
    size = max(1, -(-len(text) // pieces))
    return [text[start : start + size] for start in range(0, len(text), size)]


def event_bytes(event):
    """One SSE event as one HTTP chunk."""
    payload = f"event: {event['type']}\ndata: {json.dumps(event)}\n\n".encode()
    return b"%x\r\n%s\r\n" % (len(payload), payload)


HEAD = (
    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream; charset=utf-8\r\n"
    b"Transfer-Encoding: chunked\r\nCache-Control: no-cache\r\nConnection: close\r\n\r\n"
)


def title_bytes(spec):
    """The whole response to a title request: the spec's `title`, a word a delta, then its end."""
    words = [word + " " for word in spec["title"].split()]
    words[-1] = words[-1].rstrip()
    response = {"id": f"resp_title_{spec['id']}", "object": "response", "status": "in_progress", "model": "bench"}
    where = {"item_id": "msg_title", "output_index": 0, "content_index": 0}
    events = [{"type": "response.created", "sequence_number": 0, "response": response}]
    events += [
        {"type": "response.output_text.delta", "sequence_number": 1 + index, **where, "delta": word}
        for index, word in enumerate(words)
    ]
    part = {"type": "output_text", "text": "".join(words), "annotations": []}
    item = {"id": "msg_title", "type": "message", "status": "completed", "role": "assistant", "content": [part]}
    usage = {"input_tokens": 60, "output_tokens": len(words), "total_tokens": 60 + len(words)}
    completed = {**response, "status": "completed", "output": [item], "usage": usage}
    events.append({"type": "response.completed", "sequence_number": 1 + len(words), "response": completed})
    return HEAD + b"".join(event_bytes(event) for event in events) + b"0\r\n\r\n"


class Answer:
    """One answer's readers: the site's connection, and the direct client's when paired."""

    def __init__(self, spec):
        self.spec = spec
        self.site = None
        self.direct = None
        self.site_request_ns = None
        self.ready = asyncio.Event()
        self.finished = asyncio.Event()

    def attach(self, role, writer, received_ns):
        if role == "direct":
            self.direct = writer
        else:
            self.site = writer
            self.site_request_ns = received_ns
        if self.site is not None and (self.direct is not None or not self.spec.get("pair")):
            self.ready.set()


class TimedUpstream:
    def __init__(self):
        self.answers = {}
        self.served = 0
        self.played = set()  # the answers played to their end, whose later requests are titles

    async def handle(self, reader, writer):
        try:
            while await self.handle_request(reader, writer):
                pass
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    async def handle_request(self, reader, writer):
        """One request on a (keep-alive) connection; False when the connection should close."""
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError:
            return False
        received_ns = time.monotonic_ns()
        lines = head.decode("latin-1").split("\r\n")
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        body = await reader.readexactly(int(headers.get("content-length") or 0))
        received_ns = time.monotonic_ns()
        method, path = lines[0].split(" ")[:2]
        if method != "POST" or not path.endswith("/responses"):
            writer.write(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
            return True
        spec = self.spec_of(body)
        if spec is None:
            message = b'{"error": {"message": "no BENCH tag in the last user message", "code": "bench"}}'
            writer.write(b"HTTP/1.1 400 Bad Request\r\nContent-Type: application/json\r\n")
            writer.write(b"Content-Length: %d\r\n\r\n%s" % (len(message), message))
            return True
        role = headers.get("x-bench-role", "site")
        key = (spec["id"], spec.get("attempt", 0))
        if key in self.played and spec.get("title"):
            writer.write(title_bytes(spec))
            await self.drain(writer)
            return False
        answer = self.answers.get(key)
        if answer is None:
            answer = self.answers[key] = Answer(spec)
            asyncio.get_running_loop().create_task(self.play(key, answer))
        answer.attach(role, writer, received_ns)
        # The connection belongs to the answer until it ends (`Connection: close`).
        await answer.finished.wait()
        return False

    def spec_of(self, raw):
        try:
            body = json.loads(raw)
        except ValueError:
            return None
        items = body.get("input") if isinstance(body, dict) else None
        if isinstance(items, str):
            texts = [items]
        else:
            texts = [str(item.get("content")) for item in items or [] if isinstance(item, dict)]
        for text in reversed(texts):
            match = TAG.search(text)
            if match:
                return json.loads(match.group(1))
        return None

    async def play(self, key, answer):
        try:
            await asyncio.wait_for(answer.ready.wait(), PAIR_TIMEOUT)
        except TimeoutError:
            logger.warning("Answer %s: its second reader never came", key)
            for writer in (answer.site, answer.direct):
                if writer is not None:
                    writer.close()
            answer.finished.set()
            self.answers.pop(key, None)
            return
        spec = answer.spec
        readers = [writer for writer in (answer.site, answer.direct) if writer is not None]
        n, rate = int(spec["n"]), float(spec["rate"])
        markdown = (
            split_evenly(markdown_document(int(spec.get("chars", 100_000))), n) if spec["body"] == "markdown" else None
        )
        n = len(markdown) if markdown else n
        response = {"id": f"resp_{spec['id']}", "object": "response", "status": "in_progress", "model": "bench"}
        where = {"item_id": "msg_bench", "output_index": 0, "content_index": 0}
        first_byte_ns = time.monotonic_ns()
        opening = HEAD + b"".join(
            event_bytes(event)
            for event in (
                {"type": "response.created", "sequence_number": 0, "response": response},
                {"type": "response.in_progress", "sequence_number": 1, "response": response},
                {
                    "type": "response.output_item.added",
                    "sequence_number": 2,
                    "output_index": 0,
                    "item": {"id": "msg_bench", "type": "message", "role": "assistant", "content": []},
                },
                {
                    "type": "response.content_part.added",
                    "sequence_number": 3,
                    **where,
                    "part": {"type": "output_text", "text": ""},
                },
            )
        )
        for writer in readers:
            writer.write(opening)
        if answer.direct is not None:
            meta = {"type": "bench.meta", "site_request_ns": answer.site_request_ns, "first_byte_ns": first_byte_ns}
            answer.direct.write(event_bytes(meta))
        loop = asyncio.get_running_loop()
        start = loop.time()
        texts = []
        for index in range(n):
            delay = start + index / rate - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            emitted_ns = time.monotonic_ns()
            delta = markdown[index] if markdown else marker_delta(index, emitted_ns)
            texts.append(delta)
            chunk = event_bytes(
                {"type": "response.output_text.delta", "sequence_number": 4 + index, **where, "delta": delta}
            )
            # Alternate which reader is written first, so neither is always a write behind.
            for writer in readers if index % 2 == 0 else reversed(readers):
                writer.write(chunk)
        text = "".join(texts)
        part = {"type": "output_text", "text": text, "annotations": []}
        item = {"id": "msg_bench", "type": "message", "status": "completed", "role": "assistant", "content": [part]}
        usage = {
            "input_tokens": 10,
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": n,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": 10 + n,
        }
        number = 4 + n
        closing = b"".join(
            event_bytes(event)
            for event in (
                {"type": "response.output_text.done", "sequence_number": number, **where, "text": text},
                {"type": "response.content_part.done", "sequence_number": number + 1, **where, "part": part},
                {"type": "response.output_item.done", "sequence_number": number + 2, "output_index": 0, "item": item},
                {
                    "type": "response.completed",
                    "sequence_number": number + 3,
                    "response": {**response, "status": "completed", "output": [item], "usage": usage},
                },
            )
        )
        closing += b"e\r\ndata: [DONE]\n\n\r\n0\r\n\r\n"
        for writer in readers:
            writer.write(closing)
        await asyncio.gather(*(self.drain(writer) for writer in readers))
        for writer in readers:
            writer.close()
        answer.finished.set()
        self.answers.pop(key, None)
        self.played.add(key)
        self.served += 1

    @staticmethod
    async def drain(writer):
        try:
            await writer.drain()
        except ConnectionError:
            pass


async def serve(port):
    upstream = TimedUpstream()
    server = await asyncio.start_server(upstream.handle, "127.0.0.1", port, backlog=2048)
    sys.stdout.write(f"PORT {server.sockets[0].getsockname()[1]}\n")
    sys.stdout.flush()
    async with server:
        await server.serve_forever()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0)
    options = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="timed-upstream: %(message)s")
    try:
        asyncio.run(serve(options.port))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
