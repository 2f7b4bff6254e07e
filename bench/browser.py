"""Rendering cost in real Chromium: streaming a long Markdown answer versus rendering it once.

The real chat page (static/chat/chat.js, render.js, markdown.js) against a real daphne and the
timed upstream, which streams a generated Markdown document. Chromium's trace (category
`toplevel`) gives every task of the page's renderer main thread: their sum is the main-thread
time, the longest is the longest task; a PerformanceObserver collects `longtask` entries
(> 50 ms) as a cross-check. The end of the answer is awaited on the websocket frames that the
DevTools protocol reports, not by querying the page, which would add work to the thread measured.
"One render" is the page's own MarkdownStream.finish() of the final text into an empty message
list, in the same page, traced the same way.
"""

import json
import logging
import re
import shutil
import statistics
import time

from bench.report import Check, Section, Table, fmt
from bench.site import PASSWORD
from bench.timed_upstream import tag

logger = logging.getLogger(__name__)

CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]
CATEGORIES = ["toplevel"]
TASK_NAMES = {"ThreadControllerImpl::RunTask", "RunTask"}
# Issue 19: main-thread time while streaming at most this many full renders of the final text,
# and no task longer than 50 ms.
TARGET_RENDERS = 5
TARGET_LONGEST_TASK_MS = 50

OBSERVE_LONG_TASKS = """() => {
  window.__longTasks = [];
  window.__since = performance.now();
  new PerformanceObserver((list) => {
    for (const entry of list.getEntries()) {
      if (entry.startTime >= window.__since) window.__longTasks.push(entry.duration);
    }
  }).observe({ type: "longtask" });
}"""

RENDER_ONCE = """async ({ text }) => {
  const entry = performance.getEntriesByType("resource").find((item) => /\\/markdown[^/]*\\.js/.test(item.name));
  const { MarkdownStream } = await import(entry.name);
  const messages = document.getElementById("messages");
  messages.replaceChildren();
  const article = document.createElement("article");
  article.className = "message message-assistant";
  const body = document.createElement("div");
  body.className = "markdown message-body";
  article.append(body);
  messages.append(article);
  await new Promise((resolve) => setTimeout(resolve, 200));
  const started = performance.now();
  new MarkdownStream(body).finish(text);
  body.getBoundingClientRect();
  const took = performance.now() - started;
  await new Promise((resolve) => requestAnimationFrame(() => setTimeout(resolve, 200)));
  return took;
}"""


def main_thread_tasks(trace_bytes):
    """(start µs, duration µs) of the tasks of the busiest renderer main thread in a trace."""
    events = json.loads(trace_bytes)
    events = events["traceEvents"] if isinstance(events, dict) else events
    mains = {
        (event["pid"], event["tid"])
        for event in events
        if event.get("ph") == "M"
        and event.get("name") == "thread_name"
        and event.get("args", {}).get("name") == "CrRendererMain"
    }
    tasks = {}
    for event in events:
        key = (event.get("pid"), event.get("tid"))
        if key in mains and event.get("ph") == "X" and event.get("name") in TASK_NAMES and "dur" in event:
            tasks.setdefault(key, []).append((event["ts"], event["dur"]))
    if not tasks:
        return []
    busiest = max(tasks.values(), key=lambda items: sum(duration for _, duration in items))
    return top_level(busiest)


def top_level(tasks):
    """Tasks not nested in another (a nested run loop reports both)."""
    result, end = [], -1
    for start, duration in sorted(tasks):
        if start >= end:
            result.append((start, duration))
            end = start + duration
    return result


def totals(tasks):
    durations = [duration / 1000 for _, duration in tasks]
    return (sum(durations), max(durations) if durations else 0.0)


def watch(payload, done):
    """Notes the answer's `message.done` frame among the websocket frames the page receives."""
    if isinstance(payload, str) and '"message.done"' in payload and json.loads(payload).get("type") == "message.done":
        done.append(time.monotonic())


def log_in(page, base_url, username="bench-0"):
    page.goto(f"{base_url}/accounts/login/")
    page.get_by_label("Username").fill(username)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Log in").click()
    page.wait_for_url(re.compile(r"^https?://[^/]+/$"))
    page.get_by_role("status").filter(has_text="Connected").wait_for()


def measure(base_url, chars, deltas, rate, renders=3):
    from playwright.sync_api import sync_playwright

    executable = shutil.which("chromium") or shutil.which("chromium-browser")
    if executable is None:
        raise RuntimeError("Chromium is needed (Debian package `chromium`)")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(viewport={"width": 1200, "height": 800})
            page = context.new_page()
            errors = []
            page.on("pageerror", lambda error: errors.append(str(error)))
            done = []
            page.on("websocket", lambda socket: socket.on("framereceived", lambda payload: watch(payload, done)))
            log_in(page, base_url)
            page.evaluate(OBSERVE_LONG_TASKS)
            seconds = deltas / rate
            browser.start_tracing(page=page, categories=CATEGORIES)
            began = time.monotonic()
            page.locator("#message-input").fill(tag("browser", deltas, rate, body="markdown", pair=False, chars=chars))
            page.locator("#message-input").press("Enter")
            # Waiting for the end on the websocket's frames, which Playwright sees through the
            # DevTools protocol, costs the page nothing; waiting for a selector would query the
            # page's growing document over and over, on the main thread being measured.
            deadline = time.monotonic() + seconds + 60
            while not done and time.monotonic() < deadline:
                page.wait_for_timeout(100)
            page.wait_for_timeout(500)  # the final render and its paint
            streaming_seconds = time.monotonic() - began
            streaming = totals(main_thread_tasks(browser.stop_tracing()))
            page.locator('article[aria-label="Assistant message"][data-status="completed"]').wait_for(timeout=10_000)
            long_tasks = page.evaluate("() => window.__longTasks")
            text = page.evaluate(
                """() => document.querySelector('article[aria-label="Assistant message"] .message-body').innerText"""
            )
            source = markdown_source(chars)
            once = []
            for _ in range(renders):
                browser.start_tracing(page=page, categories=CATEGORIES)
                in_task = page.evaluate(RENDER_ONCE, {"text": source})
                main, longest = totals(main_thread_tasks(browser.stop_tracing()))
                once.append((main, longest, in_task))
            return {
                "chars": len(source),
                "rendered_chars": len(text),
                "deltas": deltas,
                "rate": rate,
                "streaming_seconds": streaming_seconds,
                "streaming_main_ms": streaming[0],
                "streaming_longest_ms": streaming[1],
                "long_tasks": long_tasks,
                "once": once,
                "errors": errors,
            }
        finally:
            browser.close()


def markdown_source(chars):
    from bench.timed_upstream import markdown_document

    return markdown_document(chars)


def section(result, settings):
    once_main = statistics.median(main for main, _, _ in result["once"])
    once_longest = statistics.median(longest for _, longest, _ in result["once"])
    once_in_task = statistics.median(in_task for _, _, in_task in result["once"])
    ratio = result["streaming_main_ms"] / once_main if once_main else None
    long_tasks = result["long_tasks"]
    table = Table(["", "main-thread ms", "longest task ms", "tasks > 50 ms (longtask API)"])
    table.rows = [
        [
            f"streaming {result['chars']:,} chars in {result['deltas']:,} deltas at {result['rate']:g}/s "
            f"({fmt(result['streaming_seconds'], 1)} s)",
            fmt(result["streaming_main_ms"], 0),
            fmt(result["streaming_longest_ms"], 1),
            f"{len(long_tasks)}" + (f" (max {fmt(max(long_tasks), 0)} ms)" if long_tasks else ""),
        ],
        [
            f"rendering the final text once (median of {len(result['once'])}; "
            f"finish() itself: {fmt(once_in_task, 1)} ms)",
            fmt(once_main, 0),
            fmt(once_longest, 1),
            "",
        ],
    ]
    checks = [
        Check(
            "browser: main-thread time streaming vs one render",
            f"{fmt(ratio, 2)} x ({fmt(result['streaming_main_ms'], 0)} ms vs {fmt(once_main, 0)} ms)",
            f"<= {TARGET_RENDERS:g} x",
            None if ratio is None else ratio <= TARGET_RENDERS,
        ),
        Check(
            "browser: longest task while streaming",
            f"{fmt(result['streaming_longest_ms'], 1)} ms",
            f"<= {TARGET_LONGEST_TASK_MS} ms",
            result["streaming_longest_ms"] <= TARGET_LONGEST_TASK_MS,
        ),
    ]
    notes = []
    if result["errors"]:
        notes.append(f"JavaScript errors on the page: {result['errors']}")
    return Section(
        "Browser rendering (Chromium)",
        method=__doc__.split("\n\n", 1)[1].strip().replace("\n", " "),
        settings=settings,
        tables=[table],
        checks=checks,
        notes=notes,
    )
