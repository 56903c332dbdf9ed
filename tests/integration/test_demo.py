"""The demo (``make run``) against the real broker: its output is its own lines only, shaped as the
README's transcript shows them, dead letters included; its worker, run with LOG_FORMAT=json, logs
one JSON object per line, and each dead letter's line names the event id, partition and offset."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT, free_port
from tests.integration.conftest import Names, create_topics, worker_env

LINE_SHAPES = {
    "status": re.compile(r"demo: (worker starting|worker ready;|produced \d+ events) .+"),
    "prediction": re.compile(
        r"  \S+ +user-\d+ +(benign|malignant) +\d\.\d{4}  breast-cancer@\d+  batch=\d+ +latency=\d+\.\dms"
    ),
    "dead letter": re.compile(r"  DEAD-LETTER \S+\[\d+\]@\d+  [a-z0-9_]+: .+"),
    "summary": re.compile(r"demo: (\d+)/\1 predictions, (\d+)/\2 dead letters, 0 missing"),
    "latency": re.compile(r"demo: latency p50 \d+\.\d ms, max \d+\.\d ms; batch sizes seen: \{.+\}"),
}


def shape(line: str) -> str:
    kinds = [kind for kind, pattern in LINE_SHAPES.items() if pattern.fullmatch(line)]
    assert len(kinds) == 1, f"not a line of the demo's: {line!r}"
    return kinds[0]


def readme_transcript() -> list[str]:
    readme = (ROOT / "README.md").read_text()
    quickstart = readme[readme.index("## Quickstart") : readme.index("## How it works")]
    blocks = re.findall(r"^```(\w*)\n(.*?)^```", quickstart, flags=re.S | re.M)
    (transcript,) = [block for language, block in blocks if not language and block.startswith("demo: ")]
    return transcript.splitlines()


NATIVE_EXIT_REPORT = re.compile(r"nanobind: .+| +- .+|See https://nanobind\S+")
"""What triton's native code writes to stderr as the interpreter exits, outside logging."""


def log_lines(path: Path) -> list[str]:
    """The worker's lines up to the native code's report at exit, if there is one."""
    lines = path.read_text().splitlines()
    for index, line in enumerate(lines):
        if line.startswith("nanobind: "):
            assert all(NATIVE_EXIT_REPORT.fullmatch(rest) for rest in lines[index:]), lines[index:]
            return lines[:index]
    return lines


def test_the_readme_transcript_has_every_kind_of_demo_line() -> None:
    kinds = [shape(line) for line in readme_transcript()]
    assert set(kinds) == set(LINE_SHAPES)


def test_the_demo_prints_only_its_own_lines_and_its_worker_logs_json(
    bootstrap_servers: str, names: Names, tmp_path: Path
) -> None:
    create_topics(bootstrap_servers, names)
    env = worker_env(bootstrap_servers, names, tmp_path, WEB_PORT=str(free_port()), LOG_FORMAT="json")
    done = subprocess.run(
        [sys.executable, "-m", "app", "demo", "-n", "80", "--rate", "200", "--malformed", "0.2"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stderr == ""  # no log lines, no progress bar
    lines = done.stdout.splitlines()
    kinds = [shape(line) for line in lines]
    assert set(kinds) == set(LINE_SHAPES), lines  # dead letters among the lines shown
    assert kinds[:3] == ["status"] * 3 and kinds[-2:] == ["summary", "latency"]

    worker_log = Path(env["WORKER_DATA_DIR"]) / "demo-worker.log"
    documents = [json.loads(line) for line in log_lines(worker_log)]  # each line one JSON object
    assert all({"time", "level", "logger", "message"} <= set(document) for document in documents)
    dead_letters = [document for document in documents if document["message"].startswith("dead-lettering")]
    dead_count = int(LINE_SHAPES["summary"].fullmatch(lines[-2])[2])  # type: ignore[index]
    assert len(dead_letters) == dead_count > 0
    for document in dead_letters:
        assert document["topic"] == names.input_topic and document["level"] == "WARNING"
        if document["error_class"] in ("schema_violation", "wrong_feature_count"):  # JSON naming its event_id
            assert re.fullmatch(r"[0-9a-f]{8}-\d+", document["event_id"]), document
        else:  # undecodable: the contract's default event id
            assert document["event_id"] == f"{names.input_topic}-{document['partition']}-{document['offset']}"
        assert document["error_class"] in document["message"] and document["model"] == "breast-cancer"
