"""Applying an adapter version to every replica that serves its plugin (promotion and rollback).

- In-process model (embedded tests, ``healthagent model``): the engine loads the version beside the old
  one and switches new requests to it between two decoding steps (``BatchEngine.load_adapter``).
- Ray Serve: the version is the HealthGPT deployment's ``user_config``. The gateway asks the Serve
  controller to redeploy its own application with every deployment exactly as it runs now — the same
  code version, replica config and options — except HealthGPT's ``user_config``. Serve treats a change of
  ``user_config`` alone as a *lightweight update*: it calls ``reconfigure`` on each running replica in
  place (no restart; requests keep flowing, each finishes on the version it started with) and keeps the
  new config for every replica it starts later (autoscaling, a replaced replica). This is what
  ``serve deploy`` does for a changed config file; the controller calls are Ray Serve's own internal
  client API (pinned with ray==2.60.0; ``tests/serving/test_ray_serve.py`` covers it on a live Ray).

Each replica checks the weights' sha256 against the registry before loading (``verify_weights``).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Protocol

from models.adapters import verify_weights


class AdapterSwap(Protocol):
    def apply(self, plugin: str, version: str, weights: list[str], sha256: str | None) -> None: ...


class InProcessSwap:
    """Hot-swap on a model running in this process (``tools.healthgpt.InProcessHealthGPT``)."""

    def __init__(self, client: Any) -> None:
        self.client = client

    def apply(self, plugin: str, version: str, weights: list[str], sha256: str | None) -> None:
        from models.spec import PluginSpec

        files = [Path(f) for f in weights]
        if sha256 is not None:
            verify_weights(files, sha256)
        engine, model = self.client.engine, self.client.model
        current = model.spec.plugins[engine.resolve(plugin)[0]]
        spec = PluginSpec.model_validate({**current.model_dump(), "weights": files})
        engine.load_adapter(plugin, version, spec)


class ServeSwap:
    """Hot-swap on every replica of the HealthGPT deployment, through the Serve controller."""

    def __init__(self, deployment: str = "HealthGPT", timeout_s: float = 300.0) -> None:
        self.deployment = deployment
        self.timeout_s = timeout_s

    def apply(self, plugin: str, version: str, weights: list[str], sha256: str | None) -> None:
        if sha256 is not None:  # the gateway checks too: a bad file fails here, before any replica
            verify_weights([Path(f) for f in weights], sha256)
        entry: dict[str, Any] = {"version": version, "weights": list(weights)}
        if sha256 is not None:
            entry["sha256"] = sha256
        redeploy_with_user_config(self.deployment, lambda old: _merged(old, plugin, entry), self.timeout_s)


def _merged(old: dict[str, Any] | None, plugin: str, entry: dict[str, Any]) -> dict[str, Any]:
    config = dict(old or {})
    adapters = dict(config.get("adapters") or {})
    adapters[plugin] = entry
    config["adapters"] = adapters
    return config


def redeploy_with_user_config(deployment: str, change, timeout_s: float) -> None:
    """Redeploy the calling replica's application unchanged but for ``deployment``'s user_config
    (``change(old) -> new``), then wait until Serve reports the application running again."""
    import ray
    from ray import serve
    from ray.serve._private.deploy_utils import get_deploy_args
    from ray.serve.context import _get_global_client
    from ray.serve.generated.serve_pb2 import ApplicationArgs, DeploymentArgs

    app = serve.get_replica_context().app_name
    client = _get_global_client()
    status = serve.status().applications[app]
    ingress = _ingress_name(client, app)
    args_list = []
    for name in status.deployments:
        info, route = client.get_deployment_info(name, app)
        config = info.deployment_config
        if name == deployment:
            config = config.model_copy(update={"user_config": change(config.user_config)})
        args = get_deploy_args(
            name,
            replica_config=info.replica_config,
            ingress=name == ingress,
            deployment_config=config,
            version=info.version,  # unchanged: only a user_config change, a lightweight update
            route_prefix=route if name == ingress else None,
        )
        proto = DeploymentArgs(
            deployment_name=args["deployment_name"],
            deployment_config=args["deployment_config_proto_bytes"],
            replica_config=args["replica_config_proto_bytes"],
            deployer_job_id=args["deployer_job_id"],
            ingress=args["ingress"],
            ingress_request_router=args["ingress_request_router"],
        )
        if args["route_prefix"]:
            proto.route_prefix = args["route_prefix"]
        args_list.append(proto.SerializeToString())
    ray.get(
        client._controller.deploy_applications.remote(
            {app: args_list}, {app: ApplicationArgs().SerializeToString()}
        )
    )
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        time.sleep(0.5)
        now = serve.status().applications[app]
        target = now.deployments.get(deployment)
        if now.status == "RUNNING" and target is not None and target.status == "HEALTHY":
            return
        if now.status in ("DEPLOY_FAILED", "UNHEALTHY"):
            raise RuntimeError(f"the adapter update failed on {deployment}: {now.message or now.status}")
    raise TimeoutError(f"{deployment} did not finish the adapter update in {timeout_s:g} s")


def _ingress_name(client, app: str) -> str:
    # The controller's record, not "the deployment with a route": an application deployed without an
    # HTTP route (route_prefix=None: handles or gRPC only) still has an ingress.
    import ray

    name = ray.get(client._controller.get_ingress_deployment_name.remote(app))
    if name is None:
        raise RuntimeError(f"application {app!r} has no ingress deployment")
    return name
