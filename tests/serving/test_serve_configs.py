"""The Ray Serve config files: accepted by Serve's own schema, and turned into our application."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from ray.serve.schema import ServeDeploySchema

from serving.deployments import build_application, configured_deployments, load_serve_config
from serving.settings import Settings, load_settings

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("name", ["local.yaml", "local-gpu.yaml", "cluster.yaml"])
def test_serve_configs_build_the_application(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(REPO)
    args, deployments, http = load_serve_config(REPO / "configs" / "serve" / name)
    assert set(deployments) == {"HealthGPT", "Specialists", "Gateway"}
    assert "user_config" in deployments["HealthGPT"], "adapter versions travel as user_config"
    settings = load_settings(args.pop("config"), **args)
    app = build_application(settings, deployments)
    assert type(app).__name__ == "Application"
    assert http["port"] == 8000


def test_cluster_replicas_ask_for_a_gpu_each() -> None:
    _, deployments, _ = load_serve_config(REPO / "configs" / "serve" / "cluster.yaml")
    assert deployments["HealthGPT"]["ray_actor_options"]["num_gpus"] == 1
    assert deployments["HealthGPT"]["autoscaling_config"]["max_replicas"] >= 1


def test_the_kuberay_service_embeds_a_valid_serve_config() -> None:
    service = yaml.safe_load((REPO / "deploy" / "kuberay" / "rayservice.yaml").read_text())
    assert service["kind"] == "RayService"
    serve_config = yaml.safe_load(service["spec"]["serveConfigV2"])
    schema = ServeDeploySchema.model_validate(serve_config)
    assert schema.applications[0].import_path == "serving.deployments:app_builder"
    workers = service["spec"]["rayClusterConfig"]["workerGroupSpecs"]
    assert workers[0]["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"


def test_a_foreign_application_is_refused(tmp_path: Path) -> None:
    bad = tmp_path / "serve.yaml"
    bad.write_text("applications:\n  - name: x\n    route_prefix: /\n    import_path: other.module:app\n")
    with pytest.raises(ValueError, match="import_path"):
        load_serve_config(bad)


def test_the_engine_bounds_what_serve_hands_a_model_replica() -> None:
    settings = Settings(engine={"max_batch": 4, "max_queue": 12})
    deployments = configured_deployments(settings, {"HealthGPT": {"num_replicas": 2}})
    assert deployments["HealthGPT"].max_ongoing_requests == 16  # derived, not hand-written
    assert (
        configured_deployments(settings, {"HealthGPT": {"max_ongoing_requests": 8}})[
            "HealthGPT"
        ].max_ongoing_requests
        == 8
    )
    with pytest.raises(ValueError, match=r"max_ongoing_requests 72 exceeds .* = 16"):
        configured_deployments(settings, {"HealthGPT": {"max_ongoing_requests": 72}})


def test_an_unknown_deployment_name_is_refused() -> None:
    with pytest.raises(ValueError, match=r"unknown deployment\(s\) \['HealthGTP'\]"):
        configured_deployments(Settings(), {"HealthGTP": {"num_replicas": 1}})


def test_the_cascade_model_is_placed_like_the_primary_unless_named() -> None:
    settings = Settings(cascade={"enabled": True}, escalation_model_spec="tiny")
    placed = {"HealthGPT": {"ray_actor_options": {"num_cpus": 2, "num_gpus": 1}}}
    deployments = configured_deployments(settings, placed)
    assert deployments["HealthGPTEscalation"].ray_actor_options["num_gpus"] == 1


def test_serve_takes_the_settings_file_from_the_flag_then_the_environment_then_the_serve_config(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from serving.cli.serve import DEFAULT_SERVE_CONFIG, _read_serve_config

    monkeypatch.chdir(tmp_path)  # not the project: the Serve config's relative `config` is still found
    for key in ("HEALTHAGENT_CONFIG", "HEALTHAGENT_HOST", "HEALTHAGENT_PORT", "HEALTHAGENT_DATA_DIR"):
        monkeypatch.delenv(key, raising=False)
    settings, overrides = _read_serve_config(DEFAULT_SERVE_CONFIG, None, None, None)
    assert settings.profile == "embedded" and settings.port == 8000 and "HealthGPT" in overrides
    from_env = tmp_path / "env.yaml"
    from_env.write_text(f"data_dir: {tmp_path / 'env'}\nport: 8100\n")
    monkeypatch.setenv("HEALTHAGENT_CONFIG", str(from_env))
    settings, _ = _read_serve_config(DEFAULT_SERVE_CONFIG, None, None, None)
    assert settings.data_dir == tmp_path / "env"
    assert settings.port == 8100, "a port the settings file names beats the Serve config's http_options"
    monkeypatch.setenv("HEALTHAGENT_PORT", "8200")
    assert _read_serve_config(DEFAULT_SERVE_CONFIG, None, None, None)[0].port == 8200
    flag = tmp_path / "flag.yaml"
    flag.write_text(f"data_dir: {tmp_path / 'flag'}\n")
    settings, _ = _read_serve_config(DEFAULT_SERVE_CONFIG, flag, None, 8300)
    assert settings.data_dir == tmp_path / "flag" and settings.port == 8300
