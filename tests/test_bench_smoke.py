"""The benchmarks still run: `python -m bench.run --quick` at tiny sizes, every part.

Only that they run and report is checked, never their figures: wall-clock limits would make the
suite flaky on a busy machine, and the figures belong in docs/benchmarks.md.
"""

import os
import signal
import struct
import subprocess
import sys

import pytest

from tests.services import ROOT

pytestmark = pytest.mark.timeout(780)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

# Issue 19's targets, each printed beside its figure: the check's name and what it is held to.
TARGETS = (
    ("in-memory layer, 1 process: added p99 at 50 answers", "<= 3.5 ms"),
    ("in-memory layer, 1 process: added p99 at 200 answers", "<= 60 ms"),
    ("in-memory layer, 1 process: send -> upstream request p99, a single send", "<= 10 ms"),
    ("in-memory layer, 1 process: send -> upstream request p99, 50 simultaneous sends", "<= 100 ms"),
    ("in-memory layer, 1 process: send -> upstream request p99, 300 simultaneous sends", "<= 1000 ms"),
    ("in-memory layer, 1 process: server CPU per delta over the whole answer, 50 answers", "<= 250 µs"),
    ("in-memory layer, 1 process: server CPU per delta over the whole answer, 200 answers", "<= 250 µs"),
    ("Redis layer, 2 processes: added p99 at 50 answers", "<= 10 ms"),
    ("Redis layer, 2 processes: server CPU per delta over the whole answer, 50 answers", "<= 400 µs"),
    ("Redis layer, 2 processes: server CPU per delta over the whole answer, 200 answers", "<= 400 µs"),
    ("browser: main-thread time streaming vs one render", "<= 5 x"),
    ("browser: longest task while streaming", "<= 50 ms"),
    ("scale: 2 processes (Redis, PostgreSQL) sustain at least what 1 process (in-memory layer, SQLite) sustains", ""),
)


def png_size(data):
    """(width, height) from a PNG's IHDR chunk, which the format puts first."""
    assert data[:8] == PNG_SIGNATURE, "the chart is not a PNG"
    length, kind = struct.unpack(">I4s", data[8:16])
    assert kind == b"IHDR" and length == 13, "the PNG does not start with its header chunk"
    return struct.unpack(">II", data[16:24])


def run_bench(*args, timeout=720):
    """`python -m bench.run ARGS` in a session of its own: on a timeout the whole session is
    stopped, its daphne, upstream, Redis and PostgreSQL with it, rather than left running."""
    process = subprocess.Popen(
        [sys.executable, "-m", "bench.run", *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGTERM)
        stdout, stderr = process.communicate()
        pytest.fail(f"bench did not finish in {timeout} s:\n{stderr[-5000:]}")
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


def stamp(path):
    return (path.stat().st_mtime_ns, path.stat().st_size) if path.exists() else None


def test_every_benchmark_runs_at_a_tiny_size_and_writes_its_report(tmp_path):
    output = tmp_path / "benchmarks.md"
    docs_chart = ROOT / "docs" / "benchmarks-scale.png"
    docs_chart_before = stamp(docs_chart)
    result = run_bench("--quick", "--output", str(output))
    assert result.returncode == 0, f"bench failed:\n{result.stdout[-5000:]}\n{result.stderr[-5000:]}"
    report = output.read_text()
    for title in (
        "Relay latency and cost: in-memory layer",
        "Relay latency and cost: Redis layer",
        "Scale: answers per second at p99 added latency <= 100 ms",
        "Database statements per answer",
        "Idle sockets",
        "Browser rendering (Chromium)",
        "Local model",
    ):
        assert title in report, f"{title!r} is missing from the report"
    assert ": failed\n" not in report, "a benchmark failed to run"
    assert "0 lost, 0 duplicated" in report, "the relay lost or repeated deltas even at a tiny size"
    for name, target in TARGETS:
        row = next((line for line in report.splitlines() if line.startswith(f"| {name} |")), None)
        assert row is not None, f"the check {name!r} is missing from the report"
        assert target in row, f"the check {name!r} is not held to {target!r}: {row}"
        assert name in result.stdout, f"the check {name!r} is not printed"

    # Both sites' rates are in the report, and the chart beside it, embedded, is a real picture.
    assert "**1 process (in-memory layer, SQLite)**" in report
    assert "**2 processes (Redis, PostgreSQL)**" in report
    chart = tmp_path / "benchmarks-scale.png"
    assert "](benchmarks-scale.png)" in report, "the report does not embed the scale chart"
    data = chart.read_bytes()
    width, height = png_size(data)
    assert 400 <= width <= 4000 and 250 <= height <= 4000, f"implausible chart of {width} x {height}"
    assert len(data) > 10_000, f"a chart of {len(data)} bytes has nothing drawn in it"
    assert stamp(docs_chart) == docs_chart_before, "a run with --output wrote the chart into docs/"


def scale_step(rate, p99_ms, lost=0):
    """A rate tried whose one answer had one delta `p99_ms` behind the direct reader (and `lost`
    deltas it never relayed)."""
    from bench.clients import AnswerRecord
    from bench.relay import Level
    from bench.scale import Step

    record = AnswerRecord(f"a{rate}", 1 + lost)
    record.site, record.direct = {0: int(p99_ms * 1e6)}, {0: 0}
    record.final_status, record.final_text = "completed", ""
    level = Level("test", 1, 1 + lost, 30.0)
    level.records = [record]
    return Step(rate, level)


def scale_result(name, *steps):
    from bench.scale import LayerResult

    return LayerResult(name, name[0], steps=list(steps))


def test_the_scale_figure_is_the_highest_rate_held_before_the_first_over():
    climbing = scale_result("one", scale_step(4, 10), scale_step(8, 99.9), scale_step(12, 150), scale_step(16, 20))
    assert (climbing.sustained, climbing.over.rate, climbing.figure()) == (8, 12, "8 answers/s")
    never_over = scale_result("one", scale_step(4, 10), scale_step(8, 50))
    assert (never_over.sustained, never_over.lower_bound, never_over.figure()) == (8, True, ">= 8 answers/s")
    at_once = scale_result("one", scale_step(4, 101))
    assert (at_once.sustained, at_once.figure()) == (0, "< 4 answers/s")
    # Fast enough but a delta lost: over all the same.
    lossy = scale_result("one", scale_step(4, 10), scale_step(8, 10, lost=1))
    assert (lossy.sustained, lossy.over.rate) == (4, 8)


def test_two_processes_are_checked_against_what_one_sustains():
    from bench.scale import two_carry_one

    one = scale_result("one", scale_step(4, 10), scale_step(8, 150))
    assert two_carry_one(one, scale_result("two", scale_step(4, 10), scale_step(8, 10), scale_step(12, 200))).passed
    assert two_carry_one(one, scale_result("two", scale_step(4, 150))).passed is False
    # Two never over, but only tried below one's figure; one over at once: nothing to compare.
    one_higher = scale_result("one", scale_step(4, 10), scale_step(8, 10), scale_step(12, 150))
    assert two_carry_one(one_higher, scale_result("two", scale_step(4, 10))).passed is None
    assert (
        two_carry_one(scale_result("one", scale_step(4, 150)), scale_result("two", scale_step(4, 150))).passed is None
    )
    assert two_carry_one(one, scale_result("two")).passed is None


def test_the_scale_chart_is_a_png_of_both_sites(tmp_path):
    from bench.scale import section, write_chart

    results = [
        scale_result("1 process", scale_step(4, 2), scale_step(8, 30), scale_step(12, 400)),
        scale_result("2 processes", scale_step(4, 5), scale_step(8, 250)),
    ]
    path = write_chart(tmp_path / "chart.png", results, 10, 90, 30)
    data = path.read_bytes()
    width, height = png_size(data)
    assert 400 <= width <= 4000 and 250 <= height <= 4000
    assert len(data) > 10_000
    markdown = section(results, "chart.png", 10, 90, 30).markdown()
    assert "![p99 added latency against answers per second" in markdown and "](chart.png)" in markdown
    assert "| 1 process | 8 answers/s | 4, 8, 12 |" in markdown
