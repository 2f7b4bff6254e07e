"""Memory of idle sockets: the server's RSS before and after N authenticated websockets connect."""

import asyncio
import time

from bench.relay import open_tabs
from bench.report import Check, Section, Table, fmt
from bench.site import cpu_seconds, rss_bytes

TARGET_MB = 150


async def measure(server, cookies, count, settle=2.0):
    warm = await open_tabs(server.port, cookies, min(10, count))  # modules and pools, once
    for tab in warm:
        tab.close()
    await asyncio.sleep(settle)
    before = rss_bytes(server.pid)
    began = time.monotonic()
    tabs = await open_tabs(server.port, cookies, count)
    connect_seconds = time.monotonic() - began
    await asyncio.sleep(settle)
    after = rss_bytes(server.pid)
    cpu_before = cpu_seconds(server.pid)
    await asyncio.sleep(settle * 2)
    idle_cpu = (cpu_seconds(server.pid) - cpu_before) / (settle * 2)
    open_count = sum(not tab.closed.done() for tab in tabs)
    for tab in tabs:
        tab.close()
    return {
        "sockets": count,
        "open": open_count,
        "before": before,
        "after": after,
        "connect_seconds": connect_seconds,
        "idle_cpu": idle_cpu,
    }


def section(results, settings):
    table = Table(
        ["layer", "sockets open", "RSS before MB", "RSS after MB", "added MB", "KB / socket", "connect s", "idle CPU %"]
    )
    checks = []
    for layer, result in results:
        added = (result["after"] - result["before"]) / 2**20
        table.rows.append(
            [
                layer,
                f"{result['open']:,} of {result['sockets']:,}",
                fmt(result["before"] / 2**20, 1),
                fmt(result["after"] / 2**20, 1),
                fmt(added, 1),
                fmt(added * 1024 / max(1, result["sockets"]), 1),
                fmt(result["connect_seconds"], 1),
                fmt(result["idle_cpu"] * 100, 1),
            ]
        )
        scaled = added * 1000 / max(1, result["sockets"])
        checks.append(
            Check(
                f"{layer}: added RSS for 1,000 idle sockets, all kept open",
                f"{fmt(scaled, 1)} MB"
                + ("" if result["sockets"] == 1000 else f" (scaled from {result['sockets']:,})")
                + (
                    ""
                    if result["open"] == result["sockets"]
                    else f"; {result['sockets'] - result['open']} sockets closed by the server"
                ),
                f"<= {TARGET_MB} MB",
                scaled <= TARGET_MB and result["open"] == result["sockets"],
            )
        )
    return Section(
        "Idle sockets",
        method=(
            "A fresh server; ten sockets opened and closed first (imports, pools); then N websockets logged in "
            "(sessions of several users) connect and stay idle. RSS from /proc before and 2 s after; idle CPU "
            "over the next 4 s."
        ),
        settings=settings,
        tables=[table],
        checks=checks,
    )
