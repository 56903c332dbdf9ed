"""Where the worker's time goes: py-spy samples of one worker draining a backlog.

    python -m benchmarks.profile [--events 60000] [--size mlp] [--top 25] [--out /tmp/profile]

Produces ``--events`` events for the model size ``--size`` (``benchmarks.bench.MODEL_SIZES``;
``noop`` is the default model's outputs with no forward: the framework's own cost) to a new topic,
runs ``python -m app worker`` on them and, once it is ready, ``py-spy record`` on it (the bench
extra), until its group has committed the whole backlog. Prints the functions with the most samples
on top of the stack (own time) and anywhere on it (inclusive time), as shares of all samples, and
the worker's rate over the backlog (lower than without the profiler); writes the
collapsed stacks (flame-graph input) and the tables to ``--out``.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from app.settings import REPO_ROOT
from benchmarks.bench import MODEL_SIZES, Bench, steady_rate


def wait_ready(port: int, timeout_s: float) -> None:
    """Until the worker's ``/ready`` answers 200 (its model is loaded and its partitions assigned)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/ready", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"the worker was not ready in {timeout_s:.0f} s")


def read_stacks(collapsed: Path) -> tuple[collections.Counter[str], collections.Counter[str], int]:
    """Own and inclusive samples per function from py-spy's collapsed output ("a;b;c count" lines)."""
    own: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    total = 0
    for line in collapsed.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack:
            continue
        count = int(count_text)
        frames = [frame_name(frame) for frame in stack.split(";")]
        total += count
        own[frames[-1]] += count
        for frame in set(frames):
            inclusive[frame] += count
    return own, inclusive, total


def frame_name(frame: str) -> str:
    """``function (path/to/module.py:line)`` without the line, the path from its package on."""
    function, _, where = frame.partition(" (")
    path = where.rstrip(")").rsplit(":", 1)[0]
    for marker in ("site-packages/", "/lib/python3", str(REPO_ROOT) + "/"):
        if marker in path:
            path = path.split(marker, 1)[1]
    return f"{function} ({path})" if path else function


def table(counter: collections.Counter[str], total: int, top: int) -> list[str]:
    return [f"| {share(count, total)} | `{name}` |" for name, count in counter.most_common(top)]


def share(count: int, total: int) -> str:
    return f"{100 * count / total:.1f}%" if total else "n/a"


def main(args: argparse.Namespace) -> None:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    bench = Bench(args.bootstrap, Path(tempfile.mkdtemp(prefix="profile-")))
    bench.size = size = MODEL_SIZES[args.size]
    source, output = bench.topic("profile-in"), bench.topic("profile-out")
    asyncio.run(bench.create(source))
    asyncio.run(bench.create(output, log_append_time=True))
    asyncio.run(bench.produce(source, args.events))
    group = f"profile-{bench.run_id}"
    env = bench.environment() | bench.worker_settings(source, output, group)
    collapsed = out / "stacks.txt"
    py_spy = Path(sys.executable).parent / "py-spy"
    with (out / "worker.log").open("wb") as log:
        command = [sys.executable, "-m", "benchmarks.peers.worker", "worker"]
        worker = subprocess.Popen(command, env=env, cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT)
        try:
            wait_ready(int(env["WEB_PORT"]), timeout_s=180)
            # Attached once the worker is ready, so imports and model loading are not in the samples.
            record = [str(py_spy), "record", "--format", "raw", "--rate", str(args.rate), "--nonblocking"]
            record += ["--output", str(collapsed), "--pid", str(worker.pid)]
            profiler = subprocess.Popen(record, stdout=log, stderr=subprocess.STDOUT)
            started = time.monotonic()
            asyncio.run(bench.wait_consumed(group, source, timeout_s=args.events / 500 + 120))
            profiler.send_signal(signal.SIGINT)  # py-spy writes its file when interrupted
            profiler.wait(timeout=60)
        finally:
            worker.send_signal(signal.SIGTERM)
            worker.wait(timeout=60)
    rows = asyncio.run(bench.collect(output))
    rate = steady_rate(sorted(row[2] for row in rows))
    own, inclusive, total = read_stacks(collapsed)
    lines = [
        f"{size.name} ({size.description}): {len(rows)}/{args.events} events out, "
        f"{rate:,.0f} events/s, {total} samples in {time.monotonic() - started:.0f} s (from ready to drained)",
        "",
        "| own samples | function |",
        "|---|---|",
        *table(own, total, args.top),
        "",
        "| inclusive samples | function |",
        "|---|---|",
        *table(inclusive, total, args.top),
    ]
    (out / "profile.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bootstrap", default=os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092"))
    parser.add_argument("--events", type=int, default=60000)
    parser.add_argument("--size", choices=MODEL_SIZES, default="mlp", help="noop: the framework's cost only")
    parser.add_argument("--rate", type=int, default=250, help="py-spy samples per second")
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--out", default="/tmp/profile")
    return parser.parse_args()


if __name__ == "__main__":
    main(parse_args())
