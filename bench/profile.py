"""Where a server's time goes: py-spy samples of the process while a benchmark runs.

`Profile(pid, path)` runs `py-spy record --gil` (only the thread holding the GIL is sampled: in
one CPython process that thread is the one working) into collapsed stacks; `summary()` ranks the
functions by the share of samples they appear in (inclusive) and are on top of (own time).
"""

import collections
import shutil
import subprocess
import sys
from pathlib import Path

from bench.report import Table


def py_spy():
    found = Path(sys.executable).parent / "py-spy"
    return str(found) if found.exists() else shutil.which("py-spy")


class Profile:
    def __init__(self, pid, path, rate=250, name="profile"):
        self.name = name
        self.pid = pid
        self.path = Path(path)
        self.rate = rate
        self.process = None

    def __enter__(self):
        binary = py_spy()
        if binary is None:
            raise RuntimeError("py-spy is not installed: pip install -r requirements-dev.txt")
        self.process = subprocess.Popen(
            [binary, "record", "--pid", str(self.pid), "--gil", "--threads", "--rate", str(self.rate)]
            + ["--format", "raw", "--output", str(self.path), "--nonblocking"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        return self

    def __exit__(self, *exc):
        self.process.send_signal(subprocess.signal.SIGINT)
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()


def read_stacks(path):
    stacks = []
    for line in Path(path).read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if stack and count.isdigit():
            stacks.append((stack.split(";"), int(count)))
    return stacks


def short(frame):
    # "function (path/to/module.py:123)" -> "function (module.py)"
    name, _, where = frame.partition(" (")
    where = where.rstrip(")").rsplit(":", 1)[0]
    parts = where.split("/")
    for anchor in ("site-packages", "lib", "main"):
        if anchor in parts:
            parts = parts[parts.index(anchor) + 1 :]
            break
    return f"{name} ({'/'.join(parts[-2:])})"


def summary(path, top=25):
    """Tables of the hottest functions, inclusive and own, and of the threads."""
    stacks = read_stacks(path)
    total = sum(count for _, count in stacks) or 1
    inclusive, own, threads = collections.Counter(), collections.Counter(), collections.Counter()
    for frames, count in stacks:
        frames = [frame for frame in frames if not frame.startswith(("thread", "process"))]
        threads[thread_kind(frames)] += count
        for frame in {short(frame) for frame in frames}:
            inclusive[frame] += count
        if frames:
            own[short(frames[-1])] += count
    tables = []
    for title, counter in (("by thread kind", threads), ("inclusive", inclusive), ("own time", own)):
        table = Table(
            ["function" if title != "by thread kind" else "thread", "% of GIL-held samples"], caption=f"{title}:"
        )
        table.rows = [[name, f"{count * 100 / total:.1f}"] for name, count in counter.most_common(top)]
        tables.append(table)
    return total, tables


def thread_kind(frames):
    text = ";".join(frames)
    if "chat/answering/worker.py" in text and "_serve" in text:
        return "answer worker threads"
    if "chat/answering/maintenance.py" in text:
        return "maintenance thread"
    if "reactor" in text or "asyncioreactor" in text or "run_forever" in text:
        return "event loop (daphne, consumers, channel layer)"
    if "ThreadPoolExecutor" in text or "_worker (concurrent" in text:
        return "sync_to_async executor threads"
    return "other"
