"""A bench of scale: the answers per second the site sustains at a p99 added latency of 100 ms.

Open loop: answers are started at a fixed rate (answers/s) for a fixed window, on schedule
whatever the site's pace, as users who do not wait for each other send. A closed loop, where the
next send waits for the last answer, slows down with the site and hides its overload. Each
answer is a timed-upstream answer of N deltas read by the site and by a direct reader, so its
added latency is bench/relay.py's: arrival at the tab minus arrival at the direct reader. The rate
steps up and the run stops after the first rate that is over (p99 above 100 ms, or an answer
lost, repeated, refused or unfinished); the figure is the highest rate below it.

A tab carries one answer at a time (a socket follows one conversation): tabs are opened before
the window, enough for the answers in flight, and each goes back to the pool at its answer's
`message.done`. On two processes the tabs are spread over both, as nginx's `least_conn` spreads
browsers' websockets, and each answer is followed by the tab that sent it; the answer path across
processes (sent through one, followed through the other) is the relay-redis part's.
"""

import asyncio
import logging
import math
import time
from dataclasses import dataclass, field

from bench.clients import AnswerRecord, DirectReader
from bench.relay import STALL_NS, Level, measured, open_tab, send_to_request
from bench.report import Check, Section, Table, fmt, ms, percentile
from bench.timed_upstream import tag

logger = logging.getLogger(__name__)

TARGET_P99_MS = 100.0
START_TIMEOUT = 30  # seconds for chat.send to be answered with the answer's message.created
DRAIN_SECONDS = 30  # after the last answer should have ended, how long the stragglers are waited for
SPARE_SECONDS = 2.0  # tabs for this much more than one answer's length of arrivals


@dataclass
class Step:
    """One rate tried: its answers' measurements, and how late the client started them."""

    rate: float
    level: Level
    start_lags: list = field(default_factory=list)  # seconds behind the schedule, per answer
    processes: int = 1

    @property
    def p99_ms(self):
        return ms(percentile(self.level.added, 0.99))

    @property
    def errors(self):
        level = self.level
        return (
            level.lost
            + level.duplicated
            + level.order_errors
            + level.text_mismatches
            + level.unfinished
            + level.failed_starts
            + level.timed_out
        )

    @property
    def held(self):
        p99 = self.p99_ms
        return p99 is not None and p99 <= TARGET_P99_MS and self.errors == 0


@dataclass
class LayerResult:
    """The steps tried on one layer, in order; `sustained` is the figure."""

    name: str
    short: str
    steps: list = field(default_factory=list)
    settings: dict = field(default_factory=dict)

    @property
    def over(self):
        return next((step for step in self.steps if not step.held), None)

    @property
    def sustained(self):
        """The highest rate held below the first over (0 when the first was over)."""
        over = self.over
        held = self.steps if over is None else self.steps[: self.steps.index(over)]
        return max((step.rate for step in held), default=0.0)

    @property
    def lower_bound(self):
        """True when no rate tried was over: the site sustains at least `sustained`."""
        return bool(self.steps) and self.over is None

    def figure(self):
        if not self.steps:
            return "–"
        if self.lower_bound:
            return f">= {self.sustained:g} answers/s"
        if not self.sustained:
            return f"< {self.steps[0].rate:g} answers/s"
        return f"{self.sustained:g} answers/s"


class TabPool:
    """Logged-in tabs spread over the servers; one answer at a time per tab."""

    def __init__(self, servers, cookies):
        self.servers = servers
        self.cookies = cookies
        self.opened = 0
        self.free = asyncio.Queue()

    async def grow(self, count):
        """At least `count` tabs open (closed ones are not counted back)."""
        while self.opened < count:
            batch = range(self.opened, min(count, self.opened + 50))
            tabs = await asyncio.gather(*(self.open(number) for number in batch))
            self.opened += len(tabs)
            for tab in tabs:
                self.free.put_nowait(tab)

    def open(self, number):
        server = self.servers[number % len(self.servers)]
        return open_tab(server.port, self.cookies[number % len(self.cookies)])

    def close(self):
        while not self.free.empty():
            self.free.get_nowait().close()


def tabs_needed(rate, window, answer_seconds):
    """Tabs enough for the answers in flight at `rate`, with some spare for slow ends."""
    return min(math.ceil(rate * window), math.ceil(rate * (answer_seconds + SPARE_SECONDS)) + 2)


async def run_step(pool, upstream_port, layer, rate, window, deltas, delta_rate, run_id, redis_pid=None):
    """Answers started every 1/`rate` s for `window` s; waits for them all to end (or time out)."""
    count = max(1, round(rate * window))
    level = Level(layer, count, deltas, delta_rate)
    level.records = [AnswerRecord(f"{run_id}-{number}", deltas) for number in range(count)]
    step = Step(rate, level, processes=len(pool.servers))
    await pool.grow(tabs_needed(rate, window, deltas / delta_rate))
    readers, releases = [], []

    async def start(record, due):
        # Waits only while every tab is still busy with its answer: counted in the start lag.
        tab = await asyncio.wait_for(pool.free.get(), START_TIMEOUT)
        step.start_lags.append(time.monotonic() - due)
        text = tag(record.answer_id, deltas, delta_rate)
        readers.append(await DirectReader.open("127.0.0.1", upstream_port, record, text))
        tab.send_message(record, text)
        try:
            await asyncio.wait_for(created(tab, record), START_TIMEOUT)
        except BaseException:
            tab.close()  # its pending send is in an unknown state: not given back
            raise
        releases.append(asyncio.ensure_future(release(pool, tab, record)))

    async def schedule():
        began = time.monotonic()
        starts = []
        for number, record in enumerate(level.records):
            due = began + number / rate
            if due > time.monotonic():
                await asyncio.sleep(due - time.monotonic())
            starts.append(asyncio.ensure_future(start(record, due)))
        results = await asyncio.gather(*starts, return_exceptions=True)
        note_failed_starts(level, results)

    try:
        timeout = deltas / delta_rate + DRAIN_SECONDS
        await measured(level, pool.servers, schedule, timeout, redis_pid)
        await asyncio.sleep(0)  # the tabs of the answers just ended go back to the pool
    finally:
        for task in releases:
            task.cancel()
        for reader in readers:
            reader.close()
    return step


async def created(tab, record):
    """Until the answer's message.created; an error frame refuses the send."""
    while not record.message_id:
        frame = await tab.frames.get()
        if frame.get("type") == "error":
            raise RuntimeError(f"chat.send refused: {frame}")


async def release(pool, tab, record):
    await record.site_done.wait()
    pool.free.put_nowait(tab)


def note_failed_starts(level, results):
    failures = [result for result in results if isinstance(result, BaseException)]
    level.failed_starts = len(failures)
    for record, result in zip(level.records, results, strict=True):
        if isinstance(result, BaseException):
            record.site_done.set()  # never started: counted as lost, not waited for
            record.direct_finished.set()
    if failures:
        logger.warning("%s answers could not start: %r", len(failures), failures[0])


async def run_layer(result, servers, cookies, upstream_port, rates, window, deltas, delta_rate, redis_pid=None):
    """Every rate in turn on the same servers, until the first one over."""
    pool = TabPool(servers, cookies)
    try:
        # A fresh server's first answers pay for its imports, connections and caches: two answers
        # first, not counted, so that the lowest rate measures the site rather than its start.
        await run_step(pool, upstream_port, result.name, 2, 1, deltas, delta_rate, f"s{result.short}w", redis_pid)
        for number, rate in enumerate(rates):
            logger.info("scale, %s: %g answers/s for %g s", result.name, rate, window)
            step = await run_step(
                pool,
                upstream_port,
                result.name,
                rate,
                window,
                deltas,
                delta_rate,
                f"s{result.short}{number}",
                redis_pid,
            )
            result.steps.append(step)
            if not step.held:
                break
    finally:
        pool.close()
    return result


# --- Figures ------------------------------------------------------------------------------------


def steps_table(result):
    table = Table(
        [
            "answers/s",
            "answers",
            "deltas relayed",
            "added p50 ms",
            "p99",
            "max",
            "stalls >100 ms",
            "lost / dup / errors",
            "send -> upstream request p50 / p99 ms",
            "start lag p99 ms",
            "server CPU % of a core, per process",
            "CPU µs / delta",
            "p99 <= 100 ms, nothing lost",
        ],
        caption=f"**{result.name}**: " + ", ".join(f"`{name}={value}`" for name, value in result.settings.items()),
    )
    for step in result.steps:
        level = step.level
        added = level.added
        request = send_to_request(level)
        errors = level.order_errors + level.text_mismatches + level.unfinished + level.failed_starts + level.timed_out
        table.rows.append(
            [
                f"{step.rate:g}",
                f"{level.answers - level.failed_starts:,} of {level.answers:,}",
                f"{level.relayed:,}",
                fmt(ms(percentile(added, 0.5))),
                fmt(step.p99_ms),
                fmt(ms(max(added)) if added else None),
                sum(value > STALL_NS for value in added),
                f"{level.lost} / {level.duplicated} / {errors}",
                f"{fmt(ms(percentile(request, 0.5)))} / {fmt(ms(percentile(request, 0.99)))}",
                fmt(percentile(step.start_lags, 0.99) * 1e3 if step.start_lags else None, 1),
                fmt(100 * level.cpu / max(level.seconds, 1e-9) / step.processes, 0),
                fmt(level.cpu / max(1, level.relayed) * 1e6, 0),
                "held" if step.held else "**over**",
            ]
        )
    return table


def summary_table(results):
    table = Table(["site", "answers/s sustained at p99 added <= 100 ms", "rates tried", "first over"])
    for result in results:
        over = result.over
        table.rows.append(
            [
                result.name,
                result.figure(),
                ", ".join(f"{step.rate:g}" for step in result.steps),
                "–" if over is None else f"{over.rate:g} answers/s (p99 {fmt(over.p99_ms)} ms, {over.errors} errors)",
            ]
        )
    return table


def two_carry_one(one, two):
    """Issue 19: two processes carry at least what one carries."""
    measured_both = one.steps and two.steps
    passed = None
    if measured_both:
        passed = two.sustained >= one.sustained
        if two.lower_bound and not passed:
            passed = None  # two never went over below one's figure: the rates tried were too few
        if not one.sustained:
            passed = None  # one process was over at the lowest rate: nothing to compare with
    return Check(
        f"scale: {two.name} sustain at least what {one.name} sustains",
        f"{two.figure()} vs {one.figure()}" if measured_both else "–",
        f">= {one.name}",
        passed,
    )


def section(results, chart, window, deltas, delta_rate):
    """The scale section: the figure per site, every rate tried, the chart beside them."""
    one, two = results
    return Section(
        "Scale: answers per second at p99 added latency <= 100 ms",
        method=(
            f"Answers of {deltas} deltas at {delta_rate:g}/s ({deltas / delta_rate:g} s each) started at a fixed rate "
            f"for {window:g} s (open loop), the rate stepped up until the first rate over: p99 added latency above "
            f"{TARGET_P99_MS:g} ms, or any answer lost, repeated, refused or unfinished. Added latency as in the relay "
            "tables, over every delta of the rate's answers (the first answer-length of the window included). On two "
            "processes the tabs are spread over both and each answer is followed by the tab that sent it. Start lag: "
            "how late the client started answers against the schedule (waiting for a free tab included). CPU: the "
            "server processes' user + system time over the window and the drain, per process."
        ),
        tables=[summary_table(results), *(steps_table(result) for result in results if result.steps)],
        images=[(f"p99 added latency against answers per second, {one.name} and {two.name}", chart)],
        checks=[two_carry_one(one, two)],
    )


def write_chart(path, results, window, deltas, delta_rate):
    """A PNG of p99 added latency against answers/s per site, with the 100 ms line (matplotlib, Agg)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import FuncFormatter

    # Figure and the Agg canvas directly: no pyplot, whose global state and GUI backends a
    # headless benchmark has no use for.
    figure = Figure(figsize=(8, 4.8), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots()
    highest = TARGET_P99_MS
    for result, marker in zip(results, ("o", "s"), strict=False):
        # Log scale: a p99 of 0 (or below, the site ahead of the direct reader) is drawn at 0.01 ms.
        points = [(step.rate, max(step.p99_ms, 0.01)) for step in result.steps if step.p99_ms is not None]
        if not points:
            continue
        highest = max(highest, *(p99 for _, p99 in points))
        (line,) = axes.plot(*zip(*points, strict=True), marker=marker, label=f"{result.name}: {result.figure()}")
        sustained = [point for point in points if point[0] == result.sustained]
        if sustained:
            axes.plot(*sustained[0], marker="*", markersize=16, color=line.get_color(), linestyle="none")
    axes.axhline(TARGET_P99_MS, color="tab:red", linestyle="--", label=f"p99 added {TARGET_P99_MS:g} ms")
    axes.set_yscale("log")
    axes.set_ylim(top=highest * 2)
    axes.set_xlim(left=0)
    axes.yaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    axes.set_xlabel("answers started per second (open loop)")
    axes.set_ylabel("p99 added latency (ms)")
    axes.set_title(f"Answers of {deltas} deltas at {delta_rate:g}/s, each rate for {window:g} s; star: sustained")
    axes.grid(True, which="both", alpha=0.3)
    axes.legend(loc="lower right")
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, format="png", metadata={"Software": None})
    return path
