"""deploy/prometheus/alerts.yml against the code, the docs and its own promtool tests.

Every metric an alert reads is one the platform registers; the alerts are the ones
docs/operations.md lists, with the same expressions; every alert has a test in
alerts_test.yml that fires it and one that must not; and promtool (when installed, as
in CI) checks the rules and runs those tests.
"""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest

import wallet_platform.observability.metrics as metrics
from tests.unit.deploy_files import DEPLOY, registered_sample_names, yaml_docs

PROMETHEUS = DEPLOY / "prometheus"
ALERTS = yaml_docs(PROMETHEUS / "alerts.yml")[0]
RULES = {rule["alert"]: rule for group in ALERTS["groups"] for rule in group["rules"]}
OPERATIONS_DOC = DEPLOY.parent / "docs" / "operations.md"


def _normalized(expr: str) -> str:
    return re.sub(r"\s+", "", expr).replace("\\|", "|")


def test_alerts_read_only_metrics_the_platform_exports():
    assert len(RULES) >= 8
    registered = registered_sample_names()
    for name, rule in RULES.items():
        used = set(re.findall(r"\b(wallet_[a-z0-9_]+)", rule["expr"]))
        assert used or rule["expr"].startswith("up{"), name  # or Prometheus' own scrape health
        assert used <= registered and used <= metrics.METRIC_NAMES, (name, used - registered)


def test_alerts_are_the_documented_ones():
    text = OPERATIONS_DOC.read_text()
    section = text.split("### Alerts", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| `(\w+)` \| `(.+?)` \| (\w+) \|", section, flags=re.MULTILINE)
    documented = {name: (expr, duration) for name, expr, duration in rows}
    assert set(documented) == set(RULES)
    for name, rule in RULES.items():
        expr, duration = documented[name]
        assert _normalized(expr) == _normalized(rule["expr"]), name
        assert duration == rule["for"], name
        assert rule["labels"]["severity"] in {"page", "ticket"}, name
        assert {"summary", "runbook"} <= set(rule["annotations"]), name


def test_every_alert_has_a_firing_and_a_quiet_test():
    tests = yaml_docs(PROMETHEUS / "alerts_test.yml")[0]
    assert tests["rule_files"] == ["alerts.yml"]
    fired: set[str] = set()
    quiet: set[str] = set()
    for case in tests["tests"]:
        for check in case["alert_rule_test"]:
            (fired if check["exp_alerts"] else quiet).add(check["alertname"])
    assert fired == set(RULES) and quiet == set(RULES)


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool not installed")
def test_promtool_checks_and_runs_the_rule_tests():
    for command in (["check", "rules", "alerts.yml"], ["test", "rules", "alerts_test.yml"]):
        result = subprocess.run(
            ["promtool", *command], cwd=PROMETHEUS, capture_output=True, text=True, timeout=60
        )
        assert result.returncode == 0, result.stdout + result.stderr
        assert "SUCCESS" in result.stdout
