"""Will the application's replicas fit the cluster? Checked before deploying, because Ray Serve otherwise
waits forever for a replica no node can hold and never says why."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# Ray Serve reserves one CPU for a replica whose options name no CPUs.
DEFAULT_REPLICA_CPUS = 1.0


class DoesNotFit(Exception):
    """A replica no node can hold; the message names the deployment and the missing resource."""


@dataclass(frozen=True)
class ReplicaDemand:
    deployment: str
    replicas: int
    resources: dict[str, float]  # per replica: CPU, GPU, memory, custom resources


def demands(deployments: dict[str, Any]) -> list[ReplicaDemand]:
    """What each deployment asks for at start: its fixed replica count, or its autoscaling floor (initial
    replicas when given), each replica with its actor resources."""
    found = []
    for name, deployment in deployments.items():
        scaling = deployment._deployment_config.autoscaling_config
        if scaling is not None:
            replicas = (
                scaling.initial_replicas if scaling.initial_replicas is not None else scaling.min_replicas
            )
        else:
            replicas = deployment.num_replicas
        actor = deployment.ray_actor_options or {}
        resources = {"CPU": float(actor.get("num_cpus", DEFAULT_REPLICA_CPUS))}
        if actor.get("num_gpus"):
            resources["GPU"] = float(actor["num_gpus"])
        if actor.get("memory"):
            resources["memory"] = float(actor["memory"])
        resources.update({key: float(value) for key, value in (actor.get("resources") or {}).items()})
        found.append(ReplicaDemand(name, int(replicas), {k: v for k, v in resources.items() if v > 0}))
    return found


def _fits(need: dict[str, float], free: dict[str, float]) -> bool:
    return all(free.get(key, 0.0) + 1e-9 >= amount for key, amount in need.items())


def _show(resources: dict[str, float]) -> str:
    return ", ".join(f"{key} {value:g}" for key, value in sorted(resources.items())) or "nothing"


def check_fit(wanted: list[ReplicaDemand], nodes: list[dict[str, float]], *, where: str = "") -> None:
    """Place every replica first-fit, largest first, on the nodes' resources; raise ``DoesNotFit`` for the
    first replica that no node can hold, naming the deployment, what it needs and what is left."""
    free = [dict(node) for node in nodes]
    replicas = [(demand, index) for demand in wanted for index in range(demand.replicas)]
    replicas.sort(key=lambda item: (-item[0].resources.get("GPU", 0.0), -item[0].resources.get("CPU", 0.0)))
    placed: dict[str, int] = {}
    for demand, index in replicas:
        node = next((node for node in free if _fits(demand.resources, node)), None)
        if node is None:
            short = sorted(
                key
                for key, amount in demand.resources.items()
                if max((node.get(key, 0.0) for node in free), default=0.0) + 1e-9 < amount
            )
            total = {key: sum(node.get(key, 0.0) for node in nodes) for key in demand.resources}
            others = ", ".join(f"{name} {count}" for name, count in placed.items()) or "none"
            raise DoesNotFit(
                f"deployment {demand.deployment!r} does not fit: replica {index + 1} of {demand.replicas} "
                f"needs {_show(demand.resources)} but no node has {' and '.join(short) or 'all of it'} left "
                f"(cluster total: {_show(total)}; already placed: {others}). Lower its ray_actor_options or "
                f"replicas{' in ' + where if where else ''}, or give Ray more (ray.num_cpus / "
                "HEALTHAGENT_RAY__NUM_CPUS, a GPU worker)."
            )
        for key, amount in demand.resources.items():
            node[key] = node.get(key, 0.0) - amount
        placed[demand.deployment] = placed.get(demand.deployment, 0) + 1
