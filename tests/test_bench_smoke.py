"""The benchmarks still run: `python -m bench.run --quick` at tiny sizes, every part.

Only that they run and report is checked, never their figures: wall-clock limits would make the
suite flaky on a busy machine, and the figures belong in docs/benchmarks.md.
"""

import subprocess
import sys

import pytest

from tests.services import ROOT

pytestmark = pytest.mark.timeout(600)


def test_every_benchmark_runs_at_a_tiny_size_and_writes_its_report(tmp_path):
    output = tmp_path / "benchmarks.md"
    result = subprocess.run(
        [sys.executable, "-m", "bench.run", "--quick", "--output", str(output)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=540,
    )
    assert result.returncode == 0, f"bench failed:\n{result.stdout[-5000:]}\n{result.stderr[-5000:]}"
    report = output.read_text()
    for title in (
        "Relay latency and cost: in-memory layer",
        "Relay latency and cost: Redis layer",
        "Database statements per answer",
        "Idle sockets",
        "Browser rendering (Chromium)",
        "Local model",
    ):
        assert title in report, f"{title!r} is missing from the report"
    assert ": failed\n" not in report, "a benchmark failed to run"
    assert "0 lost, 0 duplicated" in report, "the relay lost or repeated deltas even at a tiny size"
