"""Fixed-shape decode steps (models.decode_graph): on this CPU they run eagerly, so what is checked here
is what a CUDA graph recording relies on — the same tokens as the ordinary step, no read back to the
host inside the step, and inputs, outputs and cache buffers that keep their addresses from step to step.
bench/gpu.sh checks the recorded graphs against the ordinary step on a GPU."""

from __future__ import annotations

import pytest
from PIL import Image
from torch.utils._python_dispatch import TorchDispatchMode

from models.contract import GenerationRequest
from models.decode_graph import FixedDecode, bucket_for
from models.engine import BatchEngine
from models.healthgpt import HealthGPT
from models.kv_cache import SlotCache
from models.limits import EngineLimits
from models.spec import ModelSpec

# Operators that wait for the device and copy a value to the host, or whose output shape depends on the
# data: either would break a recording (or be frozen into it).
HOST_READS = {"_local_scalar_dense", "item", "nonzero", "is_nonzero", "equal", "masked_select", "unique_dim"}


def _image(color: int) -> Image.Image:
    return Image.new("RGB", (40, 32), (color, 255 - color, color // 2))


def _run(model: HealthGPT, requests: list[GenerationRequest], graphs: bool, max_batch: int = 4):
    engine = BatchEngine(model, EngineLimits(max_batch=max_batch, max_queue=16, decode_graphs=graphs))
    try:
        jobs = [engine.submit(request) for request in requests]
        return [job.result(120) for job in jobs], engine.decode_graphs
    finally:
        engine.close()


@pytest.mark.parametrize("plugin", ["comprehension", "generation"])
def test_fixed_steps_give_the_tokens_of_the_ordinary_step(tiny_model: HealthGPT, plugin: str) -> None:
    # Three rows of one plugin: the fixed step pads them to a bucket of four (a free slot as padding).
    requests = [
        GenerationRequest(q, _image(60 * i) if i != 1 else None, plugin, max_new_tokens=5 + 4 * i)
        for i, q in enumerate(["What is shown?", "Any effusion?", "Describe the left lung."])
    ]
    ordinary, off = _run(tiny_model, requests, graphs=False)
    fixed, figures = _run(tiny_model, requests, graphs=True)
    assert off is None
    assert figures is not None and figures["fixed_steps"] > 0
    assert figures["recorded_as_cuda_graphs"] is False and figures["graphs"] == 0
    for request, a, b in zip(requests, ordinary, fixed, strict=True):
        assert b.token_ids == a.token_ids == tiny_model.generate([request])[0].token_ids
        assert max(abs(x - y) for x, y in zip(a.logprobs, b.logprobs, strict=True)) < 1e-5


def test_an_image_is_generated_through_fixed_steps_token_for_token(tiny_model: HealthGPT) -> None:
    cells = tiny_model.image_token_count("generation")
    request = GenerationRequest("Reconstruct.", _image(90), "generation", cells + 2, constrain_vq=cells)
    (ordinary,), _ = _run(tiny_model, [request], graphs=False, max_batch=1)
    (fixed,), figures = _run(tiny_model, [request], graphs=True, max_batch=1)
    assert fixed.token_ids == ordinary.token_ids
    assert len(tiny_model.vq_indices(fixed.token_ids)) == cells
    assert figures is not None and figures["fixed_steps"] == len(fixed.token_ids) - 1  # all but the first


def test_a_batch_mixing_plugins_takes_the_ordinary_step(tiny_model: HealthGPT) -> None:
    requests = [
        GenerationRequest("What is shown?", None, "comprehension", max_new_tokens=6),
        GenerationRequest("What is shown?", None, "generation", max_new_tokens=6),
    ]
    ordinary, _ = _run(tiny_model, requests, graphs=False)
    fixed, figures = _run(tiny_model, requests, graphs=True)
    assert [a.token_ids for a in fixed] == [a.token_ids for a in ordinary]
    assert figures is not None and figures["fixed_steps"] < sum(len(a.token_ids) - 1 for a in fixed)


def test_the_engine_on_a_cpu_takes_the_ordinary_step_unless_told(tiny_model: HealthGPT) -> None:
    engine = BatchEngine(tiny_model, EngineLimits())
    try:
        assert engine.decode_graphs is None
    finally:
        engine.close()


def test_a_fixed_step_reads_nothing_back_and_keeps_its_addresses(
    tiny_model: HealthGPT, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What a CUDA graph replays: the step's own operators must not wait for a value on the host, and
    every tensor it reads or writes must stay where the recording saw it."""
    seen: set[str] = set()
    addresses: list[tuple[int, ...]] = []

    class Watch(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            seen.add(func.overloadpacket.__name__)
            return func(*args, **(kwargs or {}))

    eager = FixedDecode._eager

    def watched(self: FixedDecode, recording, cache):
        with Watch():
            logits = eager(self, recording, cache)
        layer = cache.slot_layers[0]
        addresses.append(
            (
                recording.embeds.data_ptr(),
                recording.positions.data_ptr(),
                recording.attend.data_ptr(),
                recording.write_at.data_ptr(),
                layer.key_buffer.data_ptr(),
                layer.value_buffer.data_ptr(),
                cache.generation[0],
            )
        )
        return logits

    monkeypatch.setattr(FixedDecode, "_eager", watched)
    requests = [GenerationRequest(f"Describe finding {i}.", None, "comprehension", 12) for i in range(2)]
    _run(tiny_model, requests, graphs=True, max_batch=2)
    assert seen and not seen & HOST_READS, sorted(seen & HOST_READS)
    assert "index_copy_" in seen  # the column is written through a device index, not a slice
    by_generation: dict[int, set[tuple[int, ...]]] = {}
    for entry in addresses:
        by_generation.setdefault(entry[-1], set()).add(entry[:-1])
    # Between regrids (none at this length) one set of addresses serves every step of the bucket.
    assert len(addresses) >= 10
    assert all(len(seen_addresses) == 1 for seen_addresses in by_generation.values())


def test_recordings_are_dropped_when_the_cache_regrids_or_a_plugin_goes(tiny_spec: ModelSpec) -> None:
    model = HealthGPT(tiny_spec)
    # A tiny block makes the cache regrid during the answer: the recordings over the old buffers go.
    limits = EngineLimits(max_batch=1, kv_block_tokens=16, prefill_chunk_tokens=None, decode_graphs=True)
    engine = BatchEngine(model, limits)
    try:
        request = GenerationRequest("Describe every finding.", _image(20), "comprehension", 40)
        answer = engine.generate(request, 120)
        assert answer.token_ids == model.generate([request])[0].token_ids
        fixed = engine._fixed
        assert fixed is not None and fixed._cache is not None and fixed._cache.regrids >= 1
        assert set(fixed._recordings) == {("comprehension", 1)}
        fixed.forget("comprehension")
        assert not fixed._recordings
    finally:
        engine.close()


@pytest.mark.parametrize(("rows", "slots", "bucket"), [(1, 8, 1), (2, 8, 2), (3, 8, 4), (5, 8, 8), (5, 6, 6)])
def test_rows_are_padded_to_a_power_of_two_within_the_slots(rows: int, slots: int, bucket: int) -> None:
    assert bucket_for(rows, slots) == bucket


def test_a_fixed_step_refuses_rows_the_cache_does_not_hold(tiny_model: HealthGPT) -> None:
    with pytest.raises(ValueError, match="running rows"):
        FixedDecode(tiny_model).step(SlotCache(slots=2), [1], [0], "comprehension")


def test_graphs_are_recorded_on_cuda_only(tiny_model: HealthGPT) -> None:
    assert tiny_model.device.type == "cpu"
    assert FixedDecode(tiny_model).record is False
