"""The start-up resource check: replicas placed on the nodes' resources before anything is deployed."""

from __future__ import annotations

import pytest

from serving.deployments import configured_deployments
from serving.placement import DoesNotFit, ReplicaDemand, check_fit, demands
from serving.settings import Settings


def test_the_embedded_defaults_fit_two_cores() -> None:
    wanted = demands(configured_deployments(Settings()))
    assert {d.deployment: d.resources for d in wanted} == {
        "HealthGPT": {"CPU": 1.0},
        "Specialists": {"CPU": 0.5},
        "Gateway": {"CPU": 0.5},
    }
    check_fit(wanted, [{"CPU": 2.0}])


def test_a_replica_that_cannot_fit_is_named_with_the_missing_resource() -> None:
    wanted = demands(configured_deployments(Settings()))
    with pytest.raises(
        DoesNotFit, match=r"'(Specialists|Gateway)' does not fit.*needs CPU 0\.5.*no node has CPU"
    ):
        check_fit(wanted, [{"CPU": 1.0}])


def test_gpu_replicas_need_a_node_with_a_gpu_and_count_against_it() -> None:
    gpu = ReplicaDemand("HealthGPT", 2, {"CPU": 2.0, "GPU": 1.0})
    nodes = [{"CPU": 4.0}, {"CPU": 8.0, "GPU": 1.0}]
    with pytest.raises(DoesNotFit, match=r"'HealthGPT' does not fit: replica 2 of 2 .* no node has GPU left"):
        check_fit([gpu], nodes)
    check_fit([gpu], [*nodes, {"CPU": 8.0, "GPU": 1.0}])


def test_autoscaled_deployments_need_their_floor_and_custom_resources_count() -> None:
    overrides = {
        "HealthGPT": {
            "autoscaling_config": {"min_replicas": 3, "max_replicas": 8},
            "ray_actor_options": {"num_cpus": 0.25, "resources": {"gpu_worker": 1}},
        }
    }
    wanted = {d.deployment: d for d in demands(configured_deployments(Settings(), overrides))}
    assert wanted["HealthGPT"].replicas == 3
    assert wanted["HealthGPT"].resources == {"CPU": 0.25, "gpu_worker": 1.0}
    with pytest.raises(DoesNotFit, match="gpu_worker"):
        check_fit(list(wanted.values()), [{"CPU": 16.0, "gpu_worker": 2.0}])
