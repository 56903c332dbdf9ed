"""A real Prometheus (Debian's ``prometheus`` package) scrapes a worker against the broker.

Once events flowed, every PromQL expression in the README's metrics section and in the Grafana
dashboard (deploy/grafana/inference-worker.json) returns data, read from those files, not copied
here; the alert rules (deploy/prometheus/alerts.yml) load and evaluate without error; and
``promtool`` checks the rules and runs their unit tests (deploy/prometheus/alerts_test.yml).
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import re
import shutil
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ROOT, free_port
from tests.integration.conftest import (
    Names,
    WorkerProcess,
    create_topics,
    running_worker,
    worker_env,
)
from tests.integration.streams import event_value, produce, read_outputs

README = ROOT / "README.md"
DASHBOARD = ROOT / "deploy" / "grafana" / "inference-worker.json"
RULES = ROOT / "deploy" / "prometheus" / "alerts.yml"
RULE_TESTS = ROOT / "deploy" / "prometheus" / "alerts_test.yml"
JOB = "inference-worker"
VALID = 300
MALFORMED = 15
DASHBOARD_VARIABLES = {"$model": ".*", "$version": ".*", "$job": JOB, "$__rate_interval": "1m"}
"""What Grafana would put in the dashboard's queries with every model and version selected."""


def tool(name: str) -> str:
    """The path of a Prometheus binary; without it the test fails in CI and is skipped elsewhere."""
    found = shutil.which(name) or (f"/usr/bin/{name}" if Path(f"/usr/bin/{name}").exists() else None)
    if found is None:
        message = f"{name} not found: install Debian's prometheus package (apt-get install prometheus)"
        if os.environ.get("CI"):
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    return found


def readme_expressions() -> list[str]:
    """Every PromQL expression in the README's promql blocks: one a line, comments left out."""
    blocks = re.findall(r"^```promql\n(.*?)^```", README.read_text(), flags=re.S | re.M)
    return [line.strip() for block in blocks for line in block.splitlines() if line.strip() and line[0] != "#"]


def dashboard_expressions() -> list[str]:
    """Every panel target's expression, with the dashboard's variables as Grafana fills them."""
    dashboard = json.loads(DASHBOARD.read_text())
    expressions = [target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])]
    filled = []
    for expression in expressions:
        for variable, value in DASHBOARD_VARIABLES.items():
            expression = expression.replace(variable, value)
        filled.append(expression)
    return filled


def dashboard_variable_queries() -> list[tuple[str, str]]:
    """The (series selector, label) of each ``label_values`` variable of the dashboard."""
    variables = json.loads(DASHBOARD.read_text())["templating"]["list"]
    queries = []
    for variable in variables:
        if variable["type"] != "query":
            continue
        match = re.fullmatch(r"label_values\((.+), (\w+)\)", variable["query"]["query"])
        assert match, variable["query"]
        selector = match[1]
        for name, value in DASHBOARD_VARIABLES.items():
            selector = selector.replace(name, value)
        queries.append((selector, match[2]))
    return queries


class Prometheus:
    def __init__(self, port: int) -> None:
        self.url = f"http://127.0.0.1:{port}"

    def get(self, path: str, **params: str) -> Any:
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        with urllib.request.urlopen(f"{self.url}{path}{query}", timeout=10) as response:
            return json.loads(response.read())

    def query(self, expression: str) -> list[dict[str, Any]]:
        answer = self.get("/api/v1/query", query=expression)
        assert answer["status"] == "success", (expression, answer)
        result: list[dict[str, Any]] = answer["data"]["result"]
        return result


def finite_values(result: list[dict[str, Any]]) -> list[float]:
    values = [float(series["value"][1]) for series in result]
    return [value for value in values if math.isfinite(value)]


def wait_for(condition: Any, what: str, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"{what}: not after {timeout_s:.0f}s"
        time.sleep(0.5)


@pytest.fixture
def worker(bootstrap_servers: str, names: Names, tmp_path: Path) -> Iterator[WorkerProcess]:
    create_topics(bootstrap_servers, names)
    env = worker_env(bootstrap_servers, names, tmp_path)
    with running_worker(env, tmp_path / "worker.log") as process:
        yield process


@pytest.fixture
def prometheus(worker: WorkerProcess, tmp_path: Path) -> Iterator[Prometheus]:
    binary = tool("prometheus")
    port = free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text(
        json.dumps(  # YAML is a superset of JSON
            {
                "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                "rule_files": [str(RULES)],
                "scrape_configs": [{"job_name": JOB, "static_configs": [{"targets": [f"127.0.0.1:{worker.port}"]}]}],
            }
        )
    )
    log = tmp_path / "prometheus.log"
    with log.open("wb") as log_file:
        process = subprocess.Popen(
            [
                binary,
                f"--config.file={config}",
                f"--storage.tsdb.path={tmp_path / 'prometheus-data'}",
                f"--web.listen-address=127.0.0.1:{port}",
            ],
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
        server = Prometheus(port)
        try:

            def ready() -> bool:
                assert process.poll() is None, f"prometheus exited:\n{log.read_text()[-3000:]}"
                try:
                    with urllib.request.urlopen(f"{server.url}/-/ready", timeout=2) as response:
                        return bool(response.status == 200)
                except OSError:
                    return False

            wait_for(ready, "prometheus ready")
            yield server
        finally:
            process.terminate()
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def test_every_readme_and_dashboard_expression_returns_data_from_a_scraped_worker(
    bootstrap_servers: str, names: Names, worker: WorkerProcess, prometheus: Prometheus
) -> None:
    expressions = readme_expressions() + dashboard_expressions()
    assert len(readme_expressions()) >= 8 and len(dashboard_expressions()) >= 15  # the files were read
    wait_for(lambda: finite_values(prometheus.query(f'up{{job="{JOB}"}}')) == [1.0], "the worker scraped")

    def records(index: int) -> bytes:
        return b"\xff not an event" if index % 21 == 20 else event_value(index)

    total = VALID + MALFORMED
    asyncio.run(produce(bootstrap_servers, names.input_topic, records, total, rate=100.0))
    asyncio.run(
        read_outputs(bootstrap_servers, (names.output_topic, names.dead_letter_topic), lambda seen: len(seen) >= total)
    )
    # Prometheus saw every output once its counters add up (a scrape a second).
    wait_for(
        lambda: (
            finite_values(prometheus.query("sum(inference_predictions_total) + sum(inference_dead_letters_total)"))
            == [float(total)]
        ),
        "prometheus scraped every output",
    )

    empty: dict[str, list[dict[str, Any]]] = {}
    for expression in expressions:
        result = prometheus.query(expression)
        if not finite_values(result):
            empty[expression] = result
    assert not empty, f"expressions without a finite value: {json.dumps(empty, indent=1)}"

    for selector, label in dashboard_variable_queries():
        values = {series["metric"].get(label) for series in prometheus.query(selector)}
        assert values - {None}, f"dashboard variable label_values({selector}, {label}) has no values"

    rules = [rule for group in prometheus.get("/api/v1/rules")["data"]["groups"] for rule in group["rules"]]
    assert {rule["name"] for rule in rules} >= {
        "topic:inference_consumer_lag:sum",
        "InferenceWorkerDown",
        "InferenceConsumerLagGrowing",
        "InferenceDeadLetterRateHigh",
        "InferenceLatencyP99High",
        "InferenceModelLoadFailed",
    }
    wait_for(lambda: all(rule.get("lastEvaluation", "").startswith("2") for rule in rules), "rules evaluated", 10)
    unhealthy = [(rule["name"], rule.get("lastError")) for rule in rules if rule["health"] != "ok"]
    assert not unhealthy, unhealthy
    assert finite_values(prometheus.query(f'topic:inference_consumer_lag:sum{{topic="{names.input_topic}"}}'))
    firing = {alert["labels"]["alertname"] for alert in prometheus.get("/api/v1/alerts")["data"]["alerts"]}
    assert "InferenceWorkerDown" not in firing and "InferenceModelLoadFailed" not in firing


def test_promtool_checks_the_alert_rules_and_runs_their_unit_tests() -> None:
    promtool = tool("promtool")
    checked = subprocess.run([promtool, "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    tested = subprocess.run(
        [promtool, "test", "rules", RULE_TESTS.name],
        cwd=RULE_TESTS.parent,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert tested.returncode == 0, tested.stdout + tested.stderr
    alerts = set(re.findall(r"^\s+- alert: (\w+)$", RULES.read_text(), flags=re.M))
    tested_alerts = set(re.findall(r"alertname: (\w+)$", RULE_TESTS.read_text(), flags=re.M))
    assert alerts == tested_alerts, f"alerts without a unit test: {alerts - tested_alerts}"
