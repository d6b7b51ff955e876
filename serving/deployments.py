"""Ray Serve deployments: the HealthGPT model replica and the ingress running the gateway + agent."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from ray import serve
from ray.serve.handle import DeploymentHandle

from serving.replica_metrics import ReplicaEngineMetrics
from serving.settings import Settings
from tools.healthgpt import (
    AskChunk,
    AskRequest,
    AskResult,
    ImageRequest,
    ImageResult,
    ModelHealth,
    PromptSize,
    ScoreRequest,
    ScoreResult,
)


def _replica_id() -> str:
    """This replica's id within its deployment (tags its metrics); "local" outside Serve."""
    try:
        return serve.get_replica_context().replica_id.unique_id
    except Exception:  # noqa: BLE001 - outside a replica Serve raises; the tag only labels series
        return "local"


# Each deployment's defaults below are what the embedded profile needs; a Serve config file
# (configs/serve/*.yaml) overrides them. Nothing else sets replicas, resources or autoscaling.
@serve.deployment(
    name="HealthGPT", ray_actor_options={"num_cpus": 1}, health_check_period_s=15, health_check_timeout_s=60
)
class HealthGPTDeployment:
    """One replica = one base model with every plugin resident and a batching engine in front of it."""

    def __init__(self, settings: dict[str, Any], role: str = "primary") -> None:
        import torch

        from models.engine import BatchEngine
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
        engine = BatchEngine(model, config.engine)
        self.client = InProcessHealthGPT(model, engine, timeout_s=config.engine.request_timeout_s)
        self.metrics = ReplicaEngineMetrics(engine, spec.name, _replica_id()).start()

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        """Adapter hot-swap: load each named version beside the old one and switch between steps.

        ``user_config``: ``{"adapters": {"comprehension": {"version": "2026-11-20", "weights":
        ["/adapters/c.safetensors"], "sha256": "…"}}}`` (r, alpha, experts, vision_layer default to the
        current plugin's; ``sha256``, when given, must match the weights file or nothing changes).
        """
        from models.adapters import verify_weights
        from models.spec import PluginSpec

        for plugin, entry in (user_config.get("adapters") or {}).items():
            entry = dict(entry)
            version = str(entry.pop("version"))
            sha256 = entry.pop("sha256", None)  # registered adapters: checked before they load
            if sha256 is not None:
                verify_weights([Path(f) for f in entry.get("weights", [])], str(sha256))
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

    async def prompt_size(
        self, question: str, has_image: bool = False, plugin: str = "comprehension"
    ) -> PromptSize:
        """How many prompt tokens a question takes here, against this engine's limit (no forward pass):
        the gateway checks a message fits before storing it."""
        return await asyncio.to_thread(self.client.prompt_size, question, has_image, plugin)

    def info(self) -> ModelHealth:
        return self.client.info()

    async def health(self) -> ModelHealth:
        return await asyncio.to_thread(self.client.health)

    async def check_health(self) -> None:
        """Ray Serve's replica health check: a real forward pass, so a wedged model is replaced."""
        await asyncio.to_thread(self.client.health)


@serve.deployment(name="Specialists", ray_actor_options={"num_cpus": 0.5})
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


# The Gateway mostly waits (on the database, Redis, the model): Serve's default of 5 requests at once per
# replica would let five turns waiting on a model replica hold up every read and health call behind them.
@serve.deployment(name="Gateway", ray_actor_options={"num_cpus": 0.5}, max_ongoing_requests=64)
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
        from serving.api.app import create_app

        return create_app(self.services)

    def __del__(self) -> None:
        services = getattr(self, "services", None)
        if services is not None:
            services.close()


MODEL_DEPLOYMENTS = ("HealthGPT", "HealthGPTEscalation")
DEPLOYMENTS = (*MODEL_DEPLOYMENTS, "Specialists", "Gateway")
DEFAULT_SERVE_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "serve" / "local.yaml"


def engine_bound(settings: Settings) -> int:
    """Requests one HealthGPT replica can take at once: its engine's batch rows plus its queue."""
    return settings.engine.max_batch + settings.engine.max_queue


def _options(name: str, settings: Settings, overrides: dict[str, dict[str, Any]]) -> dict[str, Any]:
    options = dict(overrides.get(name, {}))
    if name == "HealthGPTEscalation" and name not in overrides:
        options = dict(overrides.get("HealthGPT", {}))  # the cascade's model is placed like the primary
    if name in MODEL_DEPLOYMENTS:
        # Serve may hand a replica as many requests as its engine can batch and queue; more would only
        # meet the engine's 503, so the bound is derived here and a config may only lower it.
        bound = engine_bound(settings)
        ongoing = options.setdefault("max_ongoing_requests", bound)
        if ongoing > bound:
            raise ValueError(
                f"deployment {name!r}: max_ongoing_requests {ongoing} exceeds what its engine takes "
                f"(engine.max_batch {settings.engine.max_batch} + engine.max_queue "
                f"{settings.engine.max_queue} = {bound})"
            )
        options["name"] = name
    if "autoscaling_config" in options:
        options.pop("num_replicas", None)
    return options


def configured_deployments(
    settings: Settings, overrides: dict[str, dict[str, Any]] | None = None
) -> dict[str, Any]:
    """Each deployment of the application with its options: the decorator's defaults, then the Serve
    config file's ``deployments`` entries (``overrides``, by name)."""
    overrides = overrides or {}
    unknown = sorted(set(overrides) - set(DEPLOYMENTS))
    if unknown:
        raise ValueError(f"unknown deployment(s) {unknown}; this application has {list(DEPLOYMENTS)}")
    classes = {
        "HealthGPT": HealthGPTDeployment,
        "HealthGPTEscalation": HealthGPTDeployment,
        "Specialists": SpecialistsDeployment,
        "Gateway": Gateway,
    }
    names = [name for name in DEPLOYMENTS if name != "HealthGPTEscalation" or settings.cascade.enabled]
    return {name: classes[name].options(**_options(name, settings, overrides)) for name in names}


def build_application(settings: Settings, overrides: dict[str, dict[str, Any]] | None = None):
    """The Ray Serve application graph: Gateway -> HealthGPT (-> HealthGPTEscalation with a cascade)
    and Gateway -> Specialists."""
    settings = settings.with_absolute_paths()
    shipped = settings.model_dump(mode="json", exclude={"bootstrap_token"})
    deployments = configured_deployments(settings, overrides)
    model = deployments["HealthGPT"].bind(shipped)
    escalation = (
        deployments["HealthGPTEscalation"].bind(shipped, "escalation") if settings.cascade.enabled else None
    )
    specialists = deployments["Specialists"].bind()
    return deployments["Gateway"].bind(shipped, model, escalation, specialists)


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
