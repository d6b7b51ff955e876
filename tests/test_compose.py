"""docker-compose.yml is valid for users to bring up: it parses, and every reference resolves."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from serving.deployments import load_serve_config
from serving.settings import load_settings

REPO = Path(__file__).resolve().parents[1]
EXPECTED = {"postgres", "redis", "orthanc", "ray-head", "ray-gpu-worker", "gateway"}


def _compose() -> dict:
    return yaml.safe_load((REPO / "docker-compose.yml").read_text())


def test_services_and_references() -> None:
    compose = _compose()
    services = compose["services"]
    assert set(services) == EXPECTED
    volumes = set(compose.get("volumes") or {})
    for name, service in services.items():
        assert "image" in service or "build" in service, name
        depends = service.get("depends_on") or []
        for dependency in depends if isinstance(depends, list) else depends.keys():
            assert dependency in services, f"{name} depends on unknown service {dependency}"
        for volume in service.get("volumes") or []:
            source = volume.split(":", 1)[0]
            if not source.startswith((".", "/")):
                assert source in volumes, f"{name} uses undeclared volume {source}"
        build = service.get("build")
        if build is not None:
            context = REPO / (build if isinstance(build, str) else build.get("context", "."))
            assert (context / "Dockerfile").is_file()


def test_gpu_worker_reserves_an_nvidia_gpu() -> None:
    devices = _compose()["services"]["ray-gpu-worker"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]


def test_orthanc_serves_dicomweb() -> None:
    environment = _compose()["services"]["orthanc"]["environment"]
    assert environment["ORTHANC__DICOM_WEB__ENABLE"] == "true"


def test_gateway_config_points_at_compose_services() -> None:
    compose = _compose()
    command = " ".join(compose["services"]["gateway"]["command"])
    config_path = re.search(r"--config (\S+)", command).group(1)
    settings = load_settings(REPO / config_path)
    assert settings.profile == "production"
    hosts = {
        settings.ray.address.split(":")[0],
        re.search(r"@([^:/]+)", settings.database_url).group(1),
        re.search(r"//([^:/]+)", settings.redis_url).group(1),
    }
    assert hosts <= set(compose["services"])
    serve_config = re.search(r"--serve-config (\S+)", command).group(1)
    _, deployments, _ = load_serve_config(REPO / serve_config)
    assert deployments["HealthGPT"]["ray_actor_options"]["num_gpus"] >= 1
    head_command = " ".join(compose["services"]["ray-head"]["command"])
    assert f"--port={settings.ray.address.split(':')[1]}" in head_command


def test_pacs_url_reaches_every_ray_node_and_names_the_orthanc_service() -> None:
    # issue 17: the Gateway replicas run on the Ray nodes, so the setting travels with the shared env.
    services = _compose()["services"]
    for name in ("ray-head", "ray-gpu-worker", "gateway"):
        value = services[name]["environment"]["HEALTHAGENT_PACS__URL"]
        default = re.fullmatch(r"\$\{HEALTHAGENT_PACS__URL:-(.+)\}", value).group(1)
        assert re.match(r"http://orthanc:8042/dicom-web$", default), (name, value)
    assert "8042:8042" in services["orthanc"]["ports"]
