"""The API's and worker's settings: prod refuses the local dummies `.env` ships."""

from __future__ import annotations

import base64
import importlib.util
import shutil
import sys
from pathlib import Path
from types import ModuleType

import pytest
from pydantic import ValidationError

from yousync.core import config
from yousync.core.config import Settings

PROD = {
    "ENVIRONMENT": "prod",
    "AWS_ACCESS_KEY_ID": "AKIAREAL",
    "AWS_SECRET_ACCESS_KEY": "real-secret",
    "FLOWER_BASIC_AUTH": "ops:real-password",
    "ANALYSIS_SHARED_SECRET": "a-real-shared-secret",
}


def prod(monkeypatch: pytest.MonkeyPatch, **overrides: str) -> Settings:
    for name, value in {**PROD, **overrides}.items():
        monkeypatch.setenv(name, value)
    return Settings()


def test_settings_when_prod_with_real_values_then_accepted(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert prod(monkeypatch).analysis_shared_secret == "a-real-shared-secret"


@pytest.mark.parametrize("secret", ["", "local-only-analysis-secret"], ids=["empty", "dotenv"])
def test_settings_when_prod_without_a_real_analysis_secret_then_refused(
    monkeypatch: pytest.MonkeyPatch, secret: str
) -> None:
    with pytest.raises(ValidationError, match="analysis_shared_secret"):
        prod(monkeypatch, ANALYSIS_SHARED_SECRET=secret)


@pytest.mark.parametrize(
    "callbacks",
    [{"CALLBACK_URL": "https://main.example/hooks"}, {"CALLBACK_ALLOWED_HOSTS": "*.example"}],
    ids=["operator-url", "allowlist"],
)
def test_settings_when_prod_has_callbacks_without_a_secret_then_refused(
    monkeypatch: pytest.MonkeyPatch, callbacks: dict[str, str]
) -> None:
    """Refused at start, not found out a day later as every callback dead-lettered."""
    monkeypatch.delenv("CALLBACK_SECRET", raising=False)
    with pytest.raises(ValidationError, match="callback_secret"):
        prod(monkeypatch, **callbacks)
    secret = "whsec_" + base64.b64encode(b"a-real-callback-secret").decode()
    assert prod(monkeypatch, **callbacks, CALLBACK_SECRET=secret).callbacks_enabled


def test_settings_when_dev_then_dotenv_secret_and_the_analysis_servers_duration_limit(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in ("ANALYSIS_SHARED_SECRET", "MAX_AUDIO_DURATION_SECONDS", "ENVIRONMENT"):
        monkeypatch.delenv(name, raising=False)

    settings = Settings()

    assert settings.analysis_shared_secret == "local-only-analysis-secret"
    assert settings.max_audio_duration_seconds == 600
    assert settings.ffmpeg_max_memory_mb == 1024


def load_config_as_installed(root: Path, monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """yousync/core/config.py as a wheel install holds it: under site-packages, no checkout."""
    installed = root / "site-packages" / "yousync" / "core" / "config.py"
    installed.parent.mkdir(parents=True)
    shutil.copy(config.__file__, installed)
    spec = importlib.util.spec_from_file_location("installed_yousync_config", installed)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)  # pydantic resolves annotations there
    spec.loader.exec_module(module)
    return module


def test_home_when_installed_from_a_wheel_then_working_directory_not_site_packages(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    work = tmp_path / "srv"
    work.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.delenv("YOUSYNC_HOME", raising=False)
    monkeypatch.delenv("SPOOL_DIR", raising=False)

    installed = load_config_as_installed(tmp_path, monkeypatch)

    assert work == installed.HOME_DIR
    assert installed.Settings.model_config["env_file"] == work / ".env"
    assert installed.Settings(_env_file=None).spool_dir == work / "var" / "spool"


def test_home_when_yousync_home_set_then_it_holds_env_and_spool(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("YOUSYNC_HOME", str(tmp_path / "data"))
    monkeypatch.delenv("SPOOL_DIR", raising=False)

    installed = load_config_as_installed(tmp_path, monkeypatch)

    assert tmp_path / "data" == installed.HOME_DIR
    assert installed.Settings(_env_file=None).spool_dir == tmp_path / "data" / "var" / "spool"


def test_home_when_run_from_the_checkout_then_its_root() -> None:
    assert Path(__file__).resolve().parents[3] == config.HOME_DIR


@pytest.mark.parametrize(
    ("broker", "is_redis"),
    [("", True), ("rediss://broker:6380/2", True), ("amqp://u:p@rabbit:5672//", False)],
    ids=["default-db-1", "tls-redis", "rabbitmq"],
)
def test_broker_is_redis_when_broker_url_set_then_only_redis_schemes_hold_queues_and_heartbeats(
    broker: str, is_redis: bool
) -> None:
    settings = Settings(redis_url="redis://r:6379/0", celery_broker_url=broker)
    assert settings.broker_is_redis is is_redis


def test_worker_heartbeat_ttl_when_interval_set_then_three_missed_beats() -> None:
    assert Settings(worker_heartbeat_seconds=0.5).worker_heartbeat_ttl_seconds == 1.5


def test_prometheus_multiproc_dir_when_unset_empty_or_relative_then_none_none_refused(
    tmp_path: Path,
) -> None:
    """prometheus-client resolves a relative directory against each process's working
    directory: refused rather than read two ways."""
    assert Settings().prometheus_multiproc_dir is None
    assert Settings(prometheus_multiproc_dir="").prometheus_multiproc_dir is None
    assert Settings(prometheus_multiproc_dir=str(tmp_path)).prometheus_multiproc_dir == tmp_path
    with pytest.raises(ValidationError, match="absolute"):
        Settings(prometheus_multiproc_dir="var/metrics")


def test_callback_settings_when_unusable_then_refused_at_start() -> None:
    good = "whsec_" + "a" * 43 + "="
    Settings(callback_secret=f"{good}, {good}", callback_url="https://be.internal/hooks")
    for bad in ({"callback_secret": "whsec_***"}, {"callback_secret": ",".join([good] * 3)}):
        with pytest.raises(ValueError, match=r"CALLBACK_SECRET|base64"):
            Settings(**bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="CALLBACK_URL"):
        Settings(callback_url="ftp://be.internal/hooks")


def test_result_retention_when_set_by_either_name_then_the_job_ttl() -> None:
    assert Settings(_env_file=None).job_ttl_seconds == 3600  # type: ignore[call-arg]
    assert Settings(RESULT_RETENTION_SECONDS=259200).job_ttl_seconds == 259200  # type: ignore[call-arg]
    assert Settings(JOB_TTL_SECONDS=7200).job_ttl_seconds == 7200  # type: ignore[call-arg]
