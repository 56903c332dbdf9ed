"""The README's client examples (examples/clients/, included in the README verbatim, which
tests/unit/test_readme_examples.py checks) run against the broker and a worker: the kcat one-liners,
and the Python producer and consumer (confluent-kafka). The Java example is not run."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest

from tests.conftest import ROOT
from tests.integration.conftest import Names, create_topics, running_worker, worker_env
from tests.integration.streams import produce, read_outputs

CLIENTS = ROOT / "examples" / "clients"


def kcat_lines(bootstrap_servers: str, names: Names) -> list[str]:
    """examples/clients/kcat.sh's commands, pointed at this test's broker and topics."""
    topics = {"events": names.input_topic, "predictions": names.output_topic, "events.dlq": names.dead_letter_topic}
    lines = []
    for line in (CLIENTS / "kcat.sh").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            line = line.replace("localhost:9092", bootstrap_servers)
            lines.append(re.sub(r"-t (\S+)", lambda m: f"-t {topics[m[1]]}", line))
    return lines


def shell(command: str, env: dict[str, str] | None = None) -> str:
    done = subprocess.run(["bash", "-c", command], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"{command}\n{done.stderr}"
    return done.stdout


@pytest.fixture(scope="module")
def kcat() -> str:
    found = shutil.which("kcat")
    if found is None and os.environ.get("CI"):
        pytest.fail("kcat not installed: .ci/run installs it (apt-get install kcat)", pytrace=False)
    if found is None:
        pytest.skip("kcat not installed: apt-get install kcat")
    return found


def test_the_readme_clients_send_events_and_read_predictions_and_dead_letters(
    kcat: str, bootstrap_servers: str, names: Names, tmp_path: Path
) -> None:
    create_topics(bootstrap_servers, names)
    env = worker_env(bootstrap_servers, names, tmp_path)
    send, read_predictions, read_dead_letters = kcat_lines(bootstrap_servers, names)
    with running_worker(env, tmp_path / "worker.log"):
        shell(send)
        client_env = {
            **env,
            "KAFKA_BOOTSTRAP_SERVERS": bootstrap_servers,
            "GROUP_ID": f"{names.app_id}-reader",
        }
        sent = shell(f"{sys.executable} {CLIENTS / 'producer.py'}", client_env)
        assert sent.strip() == f"sent 3 events to {names.input_topic}"
        asyncio.run(produce(bootstrap_servers, names.input_topic, [b"not json"]))
        expected = {"order-1001", "order-0", "order-1", "order-2"}
        asyncio.run(
            read_outputs(
                bootstrap_servers,
                (names.output_topic, names.dead_letter_topic),
                lambda got: len(got) >= 5,
                settle_s=0.5,
            )
        )
        printed = consumer_lines(client_env, len(expected), tmp_path / "consumer.stderr")
    assert {line.split()[0] for line in printed} == expected
    for line in printed:
        _, label, prediction, model = line.split()
        assert label in ("malignant", "benign") and 0.0 <= float(prediction) <= 1.0
        assert model.startswith("breast-cancer@")
    results = [orjson.loads(line) for line in shell(read_predictions).splitlines() if line.strip()]
    assert {r["event_id"] for r in results} == expected
    assert {r["user_id"] for r in results} == {"user-7"}
    dead = shell(read_dead_letters)
    assert "dlq.error.class=invalid_json" in dead and "\nnot json\n" in dead, dead


CLOSE_TIMEOUT_S = 60.0


def interruptible() -> None:
    """In the child before it runs: SIGINT back to its default, so Python turns Ctrl-C into
    KeyboardInterrupt. A shell that starts a job in the background without job control (``nohup
    ... &``, some CI runners) makes its children ignore SIGINT, and Python keeps an ignored SIGINT
    ignored: consumer.py then never stopped (a clean-clone CI run so started failed here twice)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def consumer_lines(env: dict[str, str], count: int, stderr: Path, timeout_s: float = 90.0) -> list[str]:
    """consumer.py's first ``count`` lines; then it is stopped as a user would (Ctrl-C)."""
    with stderr.open("w") as errors:
        process = subprocess.Popen(
            [sys.executable, str(CLIENTS / "consumer.py")],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=errors,
            text=True,
            preexec_fn=interruptible,
        )
    lines: list[str] = []
    deadline = time.monotonic() + timeout_s
    try:
        assert process.stdout is not None
        while len(lines) < count and time.monotonic() < deadline:
            line = process.stdout.readline()
            if not line:
                break
            lines.append(line.strip())
    finally:
        process.send_signal(signal.SIGINT)
        try:
            code = process.wait(timeout=CLOSE_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            raise AssertionError(
                f"consumer.py still running {CLOSE_TIMEOUT_S:.0f} s after Ctrl-C, having printed {lines}; "
                f"stderr: {stderr.read_text()[-2000:]}"
            ) from None
        assert code == 0, f"consumer.py exited with {code}; stderr: {stderr.read_text()[-2000:]}"
    return lines
