"""Ray Serve deployments: the HealthGPT model replica and the ingress running the gateway + agent."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from ray import serve
from ray.serve.handle import DeploymentHandle

from serving.settings import Settings
from tools.healthgpt import (
    AskChunk,
    AskRequest,
    AskResult,
    ImageRequest,
    ImageResult,
    ModelHealth,
    ScoreRequest,
    ScoreResult,
)


@serve.deployment(name="HealthGPT", health_check_period_s=15, health_check_timeout_s=60)
class HealthGPTDeployment:
    """One replica = one base model with every plugin resident and a batching engine in front of it."""

    def __init__(self, settings: dict[str, Any], role: str = "primary") -> None:
        import torch

        from models.engine import Engine, EngineLimits
        from models.healthgpt import HealthGPT
        from models.tiny import resolve_spec
        from tools.healthgpt import InProcessHealthGPT

        config = Settings.model_validate(settings)
        if role == "escalation":  # the cascade's larger model (L14), same code, another spec
            spec = resolve_spec(config.escalation_model_spec, config.model_dir, config.escalation_model_seed)
        else:
            spec = resolve_spec(config.model_spec, config.model_dir, config.model_seed)
        device = "cuda" if torch.cuda.is_available() else "cpu"
        model = HealthGPT(spec, device=device)
        engine = Engine(model, EngineLimits(**config.engine.model_dump()))
        self.client = InProcessHealthGPT(model, engine, timeout_s=config.engine.request_timeout_s)

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        """Adapter hot-swap: load each named version beside the old one and switch between steps.

        ``user_config``: ``{"adapters": {"comprehension": {"version": "2026-11-20", "weights":
        ["/adapters/c.safetensors"]}}}`` (r, alpha, experts, vision_layer default to the current plugin's).
        """
        from models.spec import PluginSpec

        for plugin, entry in (user_config.get("adapters") or {}).items():
            entry = dict(entry)
            version = str(entry.pop("version"))
            current = self.client.model.spec.plugins[self.client.engine.resolve(plugin)[0]]
            spec = PluginSpec.model_validate({**current.model_dump(), **entry})
            self.client.engine.load_adapter(plugin, version, spec)

    async def ask(self, request: AskRequest) -> AskResult:
        job = self.client.submit(request)
        try:
            answer = await asyncio.to_thread(job.result, self.client.timeout_s)
        except asyncio.CancelledError:
            job.cancel()  # the caller went away (HTTP disconnect or cancelled handle call): free the row
            raise
        return self.client.to_result(answer)

    async def ask_stream(self, request: AskRequest) -> AsyncIterator[AskChunk]:
        """Streamed over ``handle.options(stream=True)``; cancelling the stream frees the row."""
        job = self.client.submit(request)
        events = job.tokens(self.client.timeout_s)
        try:
            while (event := await asyncio.to_thread(next, events, None)) is not None:
                if event.text:
                    yield AskChunk(delta=event.text)
            yield AskChunk(result=self.client.to_result(job.result(self.client.timeout_s)))
        finally:
            if not job.done:
                job.cancel()

    async def generate_image(self, request: ImageRequest) -> ImageResult:
        return await asyncio.to_thread(self.client.generate_image, request)

    async def score(self, request: ScoreRequest) -> ScoreResult:
        return await asyncio.to_thread(self.client.score, request)

    def info(self) -> ModelHealth:
        return self.client.info()

    async def health(self) -> ModelHealth:
        return await asyncio.to_thread(self.client.health)

    async def check_health(self) -> None:
        """Ray Serve's replica health check: a real forward pass, so a wedged model is replaced."""
        await asyncio.to_thread(self.client.health)


@serve.deployment(name="Specialists")
class SpecialistsDeployment:
    """The CPU specialists (triage, intent on all-MiniLM-L6-v2): one copy of the embedding model serves
    every gateway replica."""

    def __init__(self) -> None:
        from tools.specialists import InProcessSpecialists

        self.specialists = InProcessSpecialists()
        # Load the embedding model, the knowledge base and both context passes before a real message.
        self.specialists.screen("warm up: no chest pain; 没有胸痛")

    def screen(self, text: str):
        return self.specialists.screen(text)


@serve.deployment(name="Gateway")
@serve.ingress()
class Gateway:
    def __init__(
        self,
        settings: dict[str, Any],
        model: DeploymentHandle,
        escalation: DeploymentHandle | None = None,
        specialists: DeploymentHandle | None = None,
    ) -> None:
        from serving.services import build_services
        from tools.healthgpt import CascadeHealthGPT, HealthGPTClient, RayServeHealthGPT
        from tools.specialists import RayServeSpecialists

        config = Settings.model_validate(settings)
        client: HealthGPTClient = RayServeHealthGPT(model)
        if escalation is not None:
            client = CascadeHealthGPT(client, RayServeHealthGPT(escalation), config.cascade)
        screens = RayServeSpecialists(specialists) if specialists is not None else None
        self.services = build_services(config, client, screens)

    def __serve_build_asgi_app__(self):
        from serving.gateway import create_app

        return create_app(self.services)

    def __del__(self) -> None:
        services = getattr(self, "services", None)
        if services is not None:
            services.close()


def model_deployment_options(settings: Settings, name: str = "HealthGPT") -> dict[str, Any]:
    """Replica resources, scaling and queue bounds of a HealthGPT deployment, from settings."""
    ray, engine = settings.ray, settings.engine
    options: dict[str, Any] = {
        "name": name,
        "ray_actor_options": {"num_cpus": ray.model_num_cpus, "num_gpus": ray.model_num_gpus},
        # Serve may hand a replica as many requests as its engine can batch and queue; beyond that,
        # requests wait in Serve (bounded) and then get a back-pressure error (503 + Retry-After).
        "max_ongoing_requests": engine.max_batch + engine.max_queue,
        "max_queued_requests": ray.model_max_queued_requests,
    }
    if ray.model_autoscaling:
        options["autoscaling_config"] = {
            "min_replicas": ray.model_min_replicas,
            "max_replicas": ray.model_max_replicas,
            "target_ongoing_requests": ray.model_target_ongoing_requests,
        }
    else:
        options["num_replicas"] = ray.model_replicas
    return options


def build_application(settings: Settings, overrides: dict[str, dict[str, Any]] | None = None):
    """The Ray Serve application graph: Gateway -> HealthGPT (-> HealthGPTEscalation with a cascade)
    and Gateway -> Specialists.

    ``overrides``: per-deployment options from a Serve config file (its ``deployments`` list, by name).
    """
    overrides = overrides or {}
    settings = settings.with_absolute_paths()
    shipped = settings.model_dump(mode="json", exclude={"bootstrap_token"})

    def options(name: str, base: dict[str, Any]) -> dict[str, Any]:
        merged = {**base, **overrides.get(name, {})}
        if "autoscaling_config" in overrides.get(name, {}):
            merged.pop("num_replicas", None)
        return merged

    model = HealthGPTDeployment.options(**options("HealthGPT", model_deployment_options(settings))).bind(
        shipped
    )
    escalation = None
    if settings.cascade.enabled:
        name = "HealthGPTEscalation"
        escalation = HealthGPTDeployment.options(
            **options(name, model_deployment_options(settings, name))
        ).bind(shipped, "escalation")
    specialists = SpecialistsDeployment.options(
        **options(
            "Specialists",
            {
                "num_replicas": settings.ray.specialists_replicas,
                "ray_actor_options": {"num_cpus": settings.ray.specialists_num_cpus},
            },
        )
    ).bind()
    gateway = {
        "num_replicas": settings.ray.gateway_replicas,
        "ray_actor_options": {"num_cpus": settings.ray.gateway_num_cpus},
    }
    return Gateway.options(**options("Gateway", gateway)).bind(shipped, model, escalation, specialists)


def load_serve_config(path: str | Path) -> tuple[dict[str, Any], dict[str, dict[str, Any]], dict[str, Any]]:
    """A Serve config file (the ``serve deploy`` schema, checked by Ray): the first application's
    ``args``, its per-deployment options by name, and the ``http_options``."""
    import yaml
    from ray.serve.schema import ServeDeploySchema

    raw = yaml.safe_load(Path(path).read_text())
    schema = ServeDeploySchema.model_validate(raw)  # the same checks `serve deploy` makes
    if len(schema.applications) != 1:
        raise ValueError(f"{path}: expected exactly one application")
    application = raw["applications"][0]
    if application.get("import_path") != "serving.deployments:app_builder":
        raise ValueError(f"{path}: import_path must be serving.deployments:app_builder")
    deployments = {}
    for entry in application.get("deployments", []):
        entry = dict(entry)
        deployments[entry.pop("name")] = entry
    return dict(application.get("args") or {}), deployments, dict(raw.get("http_options") or {})


def app_builder(args: dict[str, Any]):
    """Entry point of ``serve run`` / ``serve deploy`` configs (``serving.deployments:app_builder``).

    ``args`` may name a settings YAML (``config``) and override any setting; the database must already be
    migrated (``healthagent db upgrade``) and the model built (``healthagent serve`` does both locally).
    """
    from serving.settings import load_settings

    args = dict(args or {})
    settings = load_settings(args.pop("config", None), **args)
    return build_application(settings)  # Serve applies the config file's deployment options itself
