"""Database statements per answer, for a short and a long answer of the same duration.

The server runs through bench/serve.py, which counts every SQL statement the process executes;
each answer is sent on an already open socket and counted from the chat.send to its
message.done. Checkpoints are time-based (CHAT_CHECKPOINT_INTERVAL), so both answers last the
same time and only their number of deltas differs: the counts must be equal.
"""

import asyncio
import json
import os
import signal
import time
from pathlib import Path

from bench.clients import AnswerRecord, WebsocketTab
from bench.report import Check, Section, Table
from bench.timed_upstream import tag

WRITES = ("INSERT", "UPDATE", "DELETE")


def counts(server, path):
    """The server's statement counts so far (it writes them on SIGUSR1)."""
    before = path.stat().st_mtime_ns if path.exists() else 0
    os.kill(server.pid, signal.SIGUSR1)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if path.exists() and path.stat().st_mtime_ns != before:
            return json.loads(path.read_text())
        time.sleep(0.01)
    raise RuntimeError("the server did not write its statement counts")


async def one_answer(tab, server, path, answer_id, deltas, seconds):
    record = AnswerRecord(answer_id, deltas)
    before = counts(server, path)
    tab.send_message(record, tag(answer_id, deltas, deltas / seconds, pair=False))
    await asyncio.wait_for(record.site_done.wait(), seconds + 60)
    await asyncio.sleep(0.3)  # nothing of the answer is left to run after message.done
    after = counts(server, path)
    difference = {kind: after.get(kind, 0) - before.get(kind, 0) for kind in set(after) | set(before)}
    return record, {kind: count for kind, count in difference.items() if count}


async def measure(server, path, cookie, sizes, seconds):
    tab = await WebsocketTab.open("127.0.0.1", server.port, f"sessionid={cookie}")
    try:
        await one_answer(tab, server, path, "db-warm-up", 10, 0.5)  # first-use work is not an answer's
        results = []
        for deltas in sizes:
            record, difference = await one_answer(tab, server, path, f"db-{deltas}", deltas, seconds)
            results.append((deltas, record, difference))
        return results
    finally:
        tab.close()


def section(results, seconds, settings):
    kinds = sorted({kind for _, _, difference in results for kind in difference})
    table = Table(["deltas in the answer", "frames", "statements", *kinds, "writes"])
    writes = []
    for deltas, record, difference in results:
        write_count = sum(difference.get(kind, 0) for kind in WRITES)
        writes.append(write_count)
        table.rows.append(
            [
                f"{deltas:,}",
                record.delta_frames,
                sum(difference.values()),
                *(difference.get(kind, 0) for kind in kinds),
                write_count,
            ]
        )
    statements = [sum(difference.values()) for _, _, difference in results]
    sizes = " and ".join(f"{deltas:,}" for deltas, _, _ in results)
    return Section(
        "Database statements per answer",
        method=(
            f"One answer at a time on an open socket, each streamed over {seconds:g} s, counted from chat.send to "
            "message.done (every statement of the server process: consumer, worker, checkpoints, final save). "
            "Checkpoints are one per CHAT_CHECKPOINT_INTERVAL of streaming, whatever the number of deltas, so "
            "writes per answer = a fixed number + duration / interval."
        ),
        settings=settings,
        tables=[table],
        checks=[
            Check(
                f"writes per answer equal at {sizes} deltas",
                " vs ".join(map(str, writes)),
                "equal",
                len(set(writes)) == 1,
            ),
            Check(
                f"statements per answer equal at {sizes} deltas",
                " vs ".join(map(str, statements)),
                "equal",
                len(set(statements)) == 1,
            ),
        ],
    )


def counts_path(folder):
    return Path(folder) / "query-counts.json"
