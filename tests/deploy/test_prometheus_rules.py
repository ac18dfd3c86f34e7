"""deploy/prometheus/: the scrape config and the alert rules, checked by Prometheus' own
promtool (Debian's `prometheus` package; `scripts/ensure_system_deps.sh deploy`), and each alert
exercised by promtool's rule unit tests (alerts.test.yml) on faulty and healthy series."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

PROMETHEUS_DIR = Path(__file__).resolve().parents[2] / "deploy" / "prometheus"
CELERY_GUIDE = PROMETHEUS_DIR.parents[1] / "CELERY_GUIDE.md"
RUNBOOK = "CELERY_GUIDE.md#alerts"


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("promtool")
    if binary is None:
        pytest.fail("promtool is not installed: run `bash scripts/ensure_system_deps.sh deploy`")
    return subprocess.run(
        [binary, *args], cwd=PROMETHEUS_DIR, capture_output=True, text=True, timeout=60
    )


def alert_rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load((PROMETHEUS_DIR / "alerts.yml").read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def test_alert_rules_when_checked_by_promtool_then_valid() -> None:
    result = promtool("check", "rules", "alerts.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(alert_rules())} rules found" in result.stdout


def test_prometheus_config_when_checked_by_promtool_then_valid_and_loads_the_alerts() -> None:
    result = promtool("check", "config", "prometheus.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    config = yaml.safe_load((PROMETHEUS_DIR / "prometheus.yml").read_text())
    assert config["rule_files"] == ["alerts.yml"]
    assert "yousync-api" in {job["job_name"] for job in config["scrape_configs"]}


def test_alert_rules_when_fed_faulty_and_healthy_series_then_fire_only_on_the_faulty() -> None:
    result = promtool("test", "rules", "alerts.test.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_alert_rules_when_listed_then_each_has_severity_runbook_unit_tests_and_a_guide_entry() -> (
    None
):
    tests = yaml.safe_load((PROMETHEUS_DIR / "alerts.test.yml").read_text())["tests"]
    checks = [check for test in tests for check in test["alert_rule_test"]]
    guide = CELERY_GUIDE.read_text()
    alerts_section = re.search(r"^### Alerts\n(.*?)(?=^##)", guide, re.M | re.S)
    assert alerts_section, "CELERY_GUIDE.md has no '### Alerts' section"

    for rule in alert_rules():
        name = rule["alert"]
        assert rule["labels"]["severity"] in {"critical", "warning"}, name
        assert {"summary", "description"} <= set(rule["annotations"]), name
        assert rule["annotations"]["runbook_url"] == RUNBOOK, name
        fired = {
            alert["exp_labels"]["severity"]
            for check in checks
            if check["alertname"] == name
            for alert in check["exp_alerts"]
        }
        assert rule["labels"]["severity"] in fired, f"{name}: no unit test fires it"
        assert any(c["alertname"] == name and not c["exp_alerts"] for c in checks), (
            f"{name}: no unit test shows it silent on healthy input"
        )
        assert f"`{name}`" in alerts_section.group(1), f"{name}: not in CELERY_GUIDE.md Alerts"
