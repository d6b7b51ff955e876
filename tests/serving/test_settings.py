"""Settings: YAML file, environment overrides, production guards."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from serving.settings import Settings, load_settings

REPO = Path(__file__).resolve().parents[2]


def test_local_profile_is_embedded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HEALTHAGENT_CONFIG", raising=False)
    settings = load_settings(REPO / "configs" / "local.yaml")
    assert settings.profile == "embedded" and settings.redis_url == ""
    assert settings.resolved_database_url.startswith(
        "sqlite:///"
    ) and settings.resolved_database_url.endswith("var/healthagent.db")
    assert settings.resolved_checkpoint_url.endswith("var/checkpoints.sqlite")
    assert type(settings) is Settings  # picklable for Ray


def test_environment_overrides_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("port: 9000\nmax_new_tokens: 5\nray:\n  startup_timeout_s: 30\n")
    monkeypatch.setenv("HEALTHAGENT_PORT", "9100")
    monkeypatch.setenv("HEALTHAGENT_RAY__NUM_CPUS", "3")
    settings = load_settings(config)
    assert settings.port == 9100  # env beats file
    assert settings.max_new_tokens == 5  # file beats default
    assert settings.ray.startup_timeout_s == 30 and settings.ray.num_cpus == 3
    assert load_settings(config, port=9200).port == 9200  # explicit beats env


def test_postgres_database_is_also_the_checkpointer() -> None:
    settings = Settings(database_url="postgresql://u@db/health")
    assert settings.resolved_checkpoint_url == "postgresql://u@db/health"


def test_bad_settings_are_rejected(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        load_settings(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("prot: 80\n")
    with pytest.raises(ValidationError, match="prot"):
        load_settings(bad)
    with pytest.raises(ValidationError, match="PostgreSQL"):
        Settings(profile="production", redis_url="redis://r")
    with pytest.raises(ValidationError, match="redis_url"):
        Settings(profile="production", database_url="postgresql://u@db/x")


def test_bootstrap_token_empty_means_generate_and_short_is_refused() -> None:
    assert Settings(bootstrap_token="").bootstrap_token is None
    assert Settings(bootstrap_token="x" * 24).bootstrap_token.get_secret_value() == "x" * 24
    with pytest.raises(ValidationError, match="at least 24"):
        Settings(bootstrap_token="short")


def test_the_cascade_needs_a_second_model() -> None:
    with pytest.raises(ValidationError, match="escalation_model_spec"):
        Settings(cascade={"enabled": True})
    settings = Settings(cascade={"enabled": True, "min_mean_logprob": -0.8}, escalation_model_spec="tiny")
    assert settings.cascade.min_mean_logprob == -0.8 and settings.escalation_model_seed == 1


def test_deployment_options_are_not_settings() -> None:
    """Replicas and resources live only in the Serve config: a settings file naming them is refused."""
    with pytest.raises(ValueError, match="model_replicas"):
        Settings(ray={"model_replicas": 2})
