"""Placement on a multi-node Ray cluster (several raylets on this machine): HealthGPT replicas land on
the GPU-worker node, the gateway on the head. A custom resource stands in for the GPU."""

from __future__ import annotations

import pytest

from models.tiny import resolve_spec
from serving.settings import Settings
from tools.healthgpt import AskRequest, RayServeHealthGPT

pytestmark = pytest.mark.ray

ray = pytest.importorskip("ray")
serve = pytest.importorskip("ray.serve")
cluster_utils = pytest.importorskip("ray.cluster_utils")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory):
    data_dir = tmp_path_factory.mktemp("cluster")
    resolve_spec("tiny", Settings(data_dir=data_dir).model_dir, 0)
    cluster = cluster_utils.Cluster(
        initialize_head=True, head_node_args={"num_cpus": 2, "resources": {"head": 1}}
    )
    worker = cluster.add_node(num_cpus=2, resources={"gpu_worker": 2})
    ray.init(address=cluster.address, include_dashboard=False, logging_level="WARNING")
    cluster.wait_for_nodes()
    serve.start()
    yield data_dir, cluster, worker
    serve.shutdown()
    ray.shutdown()
    cluster.shutdown()


def test_replicas_land_on_the_gpu_worker_node(cluster) -> None:
    from serving.deployments import configured_deployments

    data_dir, _, worker = cluster
    settings = Settings(data_dir=data_dir)
    # What configs/serve/cluster.yaml asks of a HealthGPT replica: a GPU worker (here the custom resource).
    placed = {"num_replicas": 2, "ray_actor_options": {"num_cpus": 0.5, "resources": {"gpu_worker": 1}}}
    deployment = configured_deployments(settings, {"HealthGPT": placed})["HealthGPT"]
    shipped = settings.model_dump(mode="json", exclude={"bootstrap_token"})
    handle = serve.run(deployment.bind(shipped), name="placed", route_prefix=None)

    replicas = [
        a["name"]
        for a in ray.util.list_named_actors(all_namespaces=True)
        if a["name"].startswith("SERVE_REPLICA::placed#HealthGPT#")
    ]
    assert len(replicas) == 2
    nodes = {
        ray.get(
            ray.get_actor(name, namespace="serve").__ray_call__.remote(
                lambda self: ray.get_runtime_context().get_node_id()
            )
        )
        for name in replicas
    }
    assert nodes == {worker.node_id}
    assert RayServeHealthGPT(handle).ask(AskRequest(question="ping", max_new_tokens=2)).token_ids
    serve.delete("placed")
