"""Ray Serve deployments: the HealthGPT model replica and the ingress running the gateway + agent."""

from __future__ import annotations

from typing import Any

from ray import serve
from ray.serve.handle import DeploymentHandle

from serving.settings import Settings
from tools.healthgpt import (
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
    """One replica = one copy of the base model with every plugin resident (a GPU where there is one)."""

    def __init__(self, settings: dict[str, Any], role: str = "primary") -> None:
        import torch

        from models.healthgpt import HealthGPT
        from models.tiny import resolve_spec
        from tools.healthgpt import InProcessHealthGPT

        config = Settings.model_validate(settings)
        if role == "escalation":  # the cascade's larger model (L14), same code, another spec
            spec = resolve_spec(config.escalation_model_spec, config.model_dir, config.escalation_model_seed)
        else:
            spec = resolve_spec(config.model_spec, config.model_dir, config.model_seed)
        device = "cuda" if torch.cuda.is_available() else "cpu"
        self.client = InProcessHealthGPT(HealthGPT(spec, device=device))

    def ask(self, request: AskRequest) -> AskResult:
        return self.client.ask(request)

    def generate_image(self, request: ImageRequest) -> ImageResult:
        return self.client.generate_image(request)

    def score(self, request: ScoreRequest) -> ScoreResult:
        return self.client.score(request)

    def info(self) -> ModelHealth:
        return self.client.info()

    def health(self) -> ModelHealth:
        return self.client.health()

    def check_health(self) -> None:
        """Ray Serve's replica health check: a real forward pass, so a wedged model is replaced."""
        self.client.health()


@serve.deployment(name="Gateway")
@serve.ingress()
class Gateway:
    def __init__(
        self, settings: dict[str, Any], model: DeploymentHandle, escalation: DeploymentHandle | None = None
    ) -> None:
        from serving.services import build_services
        from tools.healthgpt import CascadeHealthGPT, HealthGPTClient, RayServeHealthGPT

        config = Settings.model_validate(settings)
        client: HealthGPTClient = RayServeHealthGPT(model)
        if escalation is not None:
            client = CascadeHealthGPT(client, RayServeHealthGPT(escalation), config.cascade)
        self.services = build_services(config, client)

    def __serve_build_asgi_app__(self):
        from serving.gateway import create_app

        return create_app(self.services)

    def __del__(self) -> None:
        services = getattr(self, "services", None)
        if services is not None:
            services.close()


def build_application(settings: Settings):
    """The Ray Serve application graph: Gateway -> HealthGPT."""
    ray = settings.ray
    shipped = settings.model_dump(mode="json", exclude={"bootstrap_token"})
    resources = {"num_cpus": ray.model_num_cpus, "num_gpus": ray.model_num_gpus}
    model = HealthGPTDeployment.options(
        num_replicas=ray.model_replicas, ray_actor_options=resources
    ).bind(shipped)
    escalation = None
    if settings.cascade.enabled:
        escalation = HealthGPTDeployment.options(
            name="HealthGPTEscalation", num_replicas=ray.model_replicas, ray_actor_options=resources
        ).bind(shipped, "escalation")
    return Gateway.options(
        num_replicas=ray.gateway_replicas, ray_actor_options={"num_cpus": ray.gateway_num_cpus}
    ).bind(shipped, model, escalation)
