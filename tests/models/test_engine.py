"""The continuous-batching engine on the tiny model: batched = single, streaming, limits, hot-swap, the
slot KV cache (a join copies no running row) and chunked prefill (same tokens; running rows keep going)."""

from __future__ import annotations

import itertools
import time
from pathlib import Path

import pytest
import torch
from PIL import Image

from models.contract import BatchModel, GenerationRequest
from models.engine import BatchEngine, EngineClosed, InvalidRequest, Job, QueueFull, RequestCancelled
from models.healthgpt import HealthGPT
from models.kv_cache import SlotCache
from models.limits import EngineLimits
from models.spec import ModelSpec
from models.tiny import build_tiny

QUESTIONS = ["What is shown?", "Is there a fracture in the left wrist?", "Describe", "Any effusion?"]


def _image(color: int) -> Image.Image:
    return Image.new("RGB", (40, 32), (color, 255 - color, color // 2))


def _single(model: HealthGPT, request: GenerationRequest) -> list[int]:
    (answer,) = model.generate([request])
    return answer.token_ids


@pytest.fixture
def engine(tiny_model: HealthGPT):
    engine = BatchEngine(tiny_model, EngineLimits(max_batch=4, max_queue=8, max_new_tokens=64))
    yield engine
    engine.close()


def test_batched_rows_of_mixed_plugins_equal_single_requests(
    engine: BatchEngine, tiny_model: HealthGPT
) -> None:
    requests = [
        GenerationRequest(q, _image(40 * i) if i % 2 else None, plugin, max_new_tokens=6 + 3 * i)
        for i, (q, plugin) in enumerate(zip(QUESTIONS * 2, ["comprehension", "generation"] * 4, strict=True))
    ]
    jobs = [engine.submit(r) for r in requests]  # 8 requests, batch of 4: rows join as others leave
    answers = [job.result(timeout_s=120) for job in jobs]
    for request, answer in zip(requests, answers, strict=True):
        assert answer.token_ids == _single(tiny_model, request)
        assert answer.adapter_version == "tiny-seed0-v1"
        assert len(answer.logprobs) == len(answer.token_ids)


def test_a_request_joining_mid_generation_is_unaffected(engine: BatchEngine, tiny_model: HealthGPT) -> None:
    long = GenerationRequest("Describe every finding in detail.", _image(10), max_new_tokens=40)
    first = engine.submit(long)
    stream = first.tokens(timeout_s=60)
    next(stream), next(stream), next(stream)  # the long request is decoding
    late = GenerationRequest("Any effusion?", None, "generation", max_new_tokens=5)
    joined = engine.submit(late)
    assert joined.result(60).token_ids == _single(tiny_model, late)
    assert first.result(60).token_ids == _single(tiny_model, long)


class _ContractOnly:
    """A model that shows only :class:`BatchModel`'s members: the engine must need nothing else."""

    members = {name for name in vars(BatchModel) if not name.startswith("_")} | set(
        BatchModel.__annotations__
    )

    def __init__(self, model: HealthGPT) -> None:
        self._model = model

    def __getattr__(self, name: str) -> object:
        if name not in self.members:
            raise AttributeError(f"{name!r} is not part of the engine contract")
        return getattr(self._model, name)


def test_the_engine_uses_only_the_model_contract(tiny_model: HealthGPT) -> None:
    engine = BatchEngine(_ContractOnly(tiny_model), EngineLimits(max_batch=2))  # type: ignore[arg-type]
    try:
        requests = [
            GenerationRequest("What is shown?", _image(30), max_new_tokens=8),
            GenerationRequest("Any effusion?", None, "generation", max_new_tokens=5),
        ]
        jobs = [engine.submit(r) for r in requests]
        for request, job in zip(requests, jobs, strict=True):
            assert job.result(60).token_ids == _single(tiny_model, request)
    finally:
        engine.close()


def test_streamed_text_adds_up_to_the_answer(engine: BatchEngine) -> None:
    job = engine.submit(GenerationRequest("What is shown?", _image(99), max_new_tokens=12))
    events = list(job.tokens(timeout_s=60))
    answer = job.result(1)
    assert [e.token_id for e in events] == answer.token_ids
    assert "".join(e.text for e in events).strip() == answer.text
    assert job.time_to_first_token_s is not None and job.time_to_first_token_s <= answer.seconds


def test_a_stop_string_ends_the_answer_before_it(engine: BatchEngine) -> None:
    # Find an answer with a substring whose first occurrence is past the start (random weights repeat).
    for question, color in [(q, c) for q in QUESTIONS for c in (None, 10, 200)]:
        image = None if color is None else _image(color)
        full = engine.generate(GenerationRequest(question, image, max_new_tokens=30), timeout_s=60)
        text = full.text
        candidates = [text[i : i + 3] for i in range(1, len(text) - 3) if text.find(text[i : i + 3]) == i]
        if candidates:
            break
    else:
        pytest.fail("no answer of the tiny model has a usable stop string")
    stop = candidates[len(candidates) // 2]
    stopped = engine.generate(
        GenerationRequest(question, image, max_new_tokens=30, stop=[stop]), timeout_s=60
    )
    assert stopped.text == text[: text.find(stop)].rstrip()
    assert len(stopped.token_ids) < len(full.token_ids)
    assert stopped.token_ids == full.token_ids[: len(stopped.token_ids)]


def test_limits_are_enforced_before_anything_runs(tiny_model: HealthGPT) -> None:
    engine = BatchEngine(tiny_model, EngineLimits(max_batch=1, max_queue=2, max_new_tokens=64))
    try:
        with pytest.raises(InvalidRequest, match="unknown plugin"):
            engine.submit(GenerationRequest("q", plugin="nope"))
        with pytest.raises(InvalidRequest, match="max_new_tokens"):
            engine.submit(GenerationRequest("q", max_new_tokens=65))
        running = engine.submit(GenerationRequest("Describe every finding.", max_new_tokens=64))
        next(running.tokens(timeout_s=60))
        queued = [engine.submit(GenerationRequest("q", max_new_tokens=2)) for _ in range(2)]
        with pytest.raises(QueueFull) as refused:
            engine.submit(GenerationRequest("q", max_new_tokens=2))
        assert refused.value.retry_after_s >= 1
        running.cancel()
        with pytest.raises(RequestCancelled):
            running.result(60)
        assert all(job.result(60).token_ids for job in queued), "the freed slot served the queue"
    finally:
        engine.close()


def test_a_cancelled_request_frees_its_slot(engine: BatchEngine) -> None:
    job = engine.submit(GenerationRequest("Describe every finding in detail.", max_new_tokens=60))
    next(job.tokens(timeout_s=60))
    job.cancel()
    with pytest.raises(RequestCancelled):
        job.result(60)
    deadline = time.monotonic() + 10
    while engine.active and time.monotonic() < deadline:
        time.sleep(0.01)
    assert engine.active == 0


def test_hot_swap_keeps_running_rows_on_their_version(tiny_spec: ModelSpec, tmp_path: Path) -> None:
    tiny_model = HealthGPT(tiny_spec)  # its own copy: this test loads and frees plugins
    engine = BatchEngine(tiny_model, EngineLimits(max_batch=4))
    try:
        _check_hot_swap(engine, tiny_model, tmp_path)
    finally:
        engine.close()


def _check_hot_swap(engine: BatchEngine, tiny_model: HealthGPT, tmp_path: Path) -> None:
    other = ModelSpec.from_yaml(build_tiny(tmp_path / "tiny-seed3", seed=3))
    new_version = other.plugins["comprehension"]
    request = GenerationRequest("Describe every finding in detail.", max_new_tokens=40)
    expected_old = _single(tiny_model, request)
    running = engine.submit(request)
    next(running.tokens(timeout_s=60))
    engine.load_adapter("comprehension", "v2", new_version)
    assert engine.plugins["comprehension"] == "v2"
    fresh = engine.generate(GenerationRequest(request.question, max_new_tokens=40), timeout_s=60)
    old = running.result(60)
    assert (old.adapter_version, old.token_ids) == ("tiny-seed0-v1", expected_old)
    assert fresh.adapter_version == "v2" and fresh.token_ids != expected_old
    # The old version is the spec's own and stays loaded; a second swap frees the runtime-loaded v2.
    engine.load_adapter("comprehension", "v3", other.plugins["generation"])
    engine.generate(GenerationRequest("q", max_new_tokens=1), timeout_s=60)
    deadline = time.monotonic() + 10  # freed right after the step that finished the last v2 row
    while "comprehension@v2" in tiny_model.spec.plugins and time.monotonic() < deadline:
        time.sleep(0.01)
    assert "comprehension@v2" not in tiny_model.spec.plugins and "comprehension@v3" in tiny_model.spec.plugins


class _Recorder(_ContractOnly):
    """The model, with each forward pass recorded: rows, columns, and the cache buffer it wrote into."""

    def __init__(self, model: HealthGPT) -> None:
        super().__init__(model)
        self.calls: list[tuple[int, int, int | None, int]] = []

    def forward(self, embeds, mask, plugins, cache, positions, last_only=False):  # type: ignore[no-untyped-def]
        logits = self._model.forward(embeds, mask, plugins, cache, positions, last_only=last_only)
        layers = cache.slot_layers if isinstance(cache, SlotCache) else []
        pointer = layers[0].key_buffer.data_ptr() if layers else None
        self.calls.append((embeds.shape[0], embeds.shape[1], pointer, getattr(cache, "regrids", 0)))
        return logits


def test_a_join_writes_only_the_joiner_into_the_running_cache(tiny_model: HealthGPT) -> None:
    recorder = _Recorder(tiny_model)
    engine = BatchEngine(recorder, EngineLimits(max_batch=4, prefill_chunk_tokens=None))  # type: ignore[arg-type]
    try:
        long = GenerationRequest("Describe every finding in detail.", _image(10), max_new_tokens=30)
        first = engine.submit(long)
        stream = first.tokens(timeout_s=60)
        next(stream), next(stream)
        late = GenerationRequest("Any effusion?", None, "generation", max_new_tokens=5)
        assert engine.submit(late).result(60).token_ids == _single(tiny_model, late)
        assert first.result(60).token_ids == _single(tiny_model, long)
    finally:
        engine.close()
    decodes = [call for call in recorder.calls if call[1] == 1]
    assert {rows for rows, *_ in decodes} == {1, 2}, "the second request joined the running batch"
    # Every decode step, before and after the join, wrote into the same buffers, never regridded.
    assert len({pointer for _, _, pointer, _ in decodes}) == 1
    assert {regrids for *_, regrids in decodes} == {0}


def test_chunked_prefill_gives_the_tokens_of_a_single_pass(tiny_model: HealthGPT) -> None:
    recorder = _Recorder(tiny_model)
    engine = BatchEngine(recorder, EngineLimits(max_batch=4, prefill_chunk_tokens=16))  # type: ignore[arg-type]
    try:
        requests = [
            GenerationRequest(q, _image(50 * i) if i % 2 == 0 else None, plugin, max_new_tokens=8)
            for i, (q, plugin) in enumerate(zip(QUESTIONS, ["comprehension", "generation"] * 2, strict=True))
        ]
        jobs = [engine.submit(r) for r in requests]
        for request, job in zip(requests, jobs, strict=True):
            answer = job.result(60)
            assert answer.prompt_tokens > 16  # the prompt really went through in several chunks
            assert answer.token_ids == _single(tiny_model, request)
    finally:
        engine.close()
    assert any(columns == 16 for _, columns, _, _ in recorder.calls)
    assert all(columns <= 16 for _, columns, _, _ in recorder.calls)


def test_a_long_prompt_joining_delays_running_rows_by_one_chunk_per_step(tiny_model: HealthGPT) -> None:
    recorder = _Recorder(tiny_model)
    engine = BatchEngine(recorder, EngineLimits(max_batch=4, prefill_chunk_tokens=16))  # type: ignore[arg-type]
    try:
        # Long enough to outlast the joiner's chunks even if this thread is descheduled a while.
        running = GenerationRequest("Any effusion?", None, "generation", max_new_tokens=200)
        first = engine.submit(running)
        stream = first.tokens(timeout_s=60)
        next(stream), next(stream)
        started = len(recorder.calls)
        long = GenerationRequest("Describe every finding in detail. " * 4, _image(70), max_new_tokens=4)
        joined = engine.submit(long)
        assert joined.result(60).token_ids == _single(tiny_model, long)
        assert first.result(60).token_ids == _single(tiny_model, running)
    finally:
        engine.close()
    calls = recorder.calls[started:]
    chunks = [i for i, (_, columns, _, _) in enumerate(calls) if columns > 1]
    assert len(chunks) >= 3, "the long prompt was prefilled in several chunks"
    # While the joiner's chunks ran, the running row decoded between every two of them (as long as it was
    # still running: a loaded machine may let it reach its end before the last chunk).
    last_decode = max(
        (i for i, (_, columns, _, _) in enumerate(calls) if columns == 1 and i < chunks[-1]), default=-2
    )
    pairs = [(b, a) for b, a in itertools.pairwise(chunks) if a <= last_decode + 1]
    assert len(pairs) >= 2, "the running row was still decoding while the prompt was prefilled"
    for before, after in pairs:
        assert after - before == 2 and calls[before + 1][:2] == (1, 1)


class _CountingEmbeds(_Recorder):
    """The recorder, also counting how often each prompt was embedded (the vision tower's work)."""

    def __init__(self, model: HealthGPT) -> None:
        super().__init__(model)
        self.embedded: list[str] = []

    def embed_prompt(self, question, image, plugin):  # type: ignore[no-untyped-def]
        self.embedded.append(question)
        return self._model.embed_prompt(question, image, plugin)


def test_the_prefill_budget_splits_a_burst_into_groups_that_keep_their_order(tiny_model: HealthGPT) -> None:
    recorder = _CountingEmbeds(tiny_model)
    limits = EngineLimits(max_batch=8, prefill_chunk_tokens=16, prefill_budget_tokens=32)
    engine = BatchEngine(recorder, limits)  # type: ignore[arg-type]
    try:
        requests = [
            GenerationRequest(f"{QUESTIONS[i % 4]} ({i})", _image(40 * i), max_new_tokens=6) for i in range(5)
        ]
        jobs = [engine.submit(r) for r in requests]
        for request, job in zip(requests, jobs, strict=True):
            assert job.result(60).token_ids == _single(tiny_model, request)
    finally:
        engine.close()
    # Every prompt is longer than a chunk, so a chunk may carry two rows (32 tokens), never more, and
    # the burst of five went through in groups of two at most.
    prefill_rows = [rows for rows, columns, _, _ in recorder.calls if columns > 1]
    assert max(prefill_rows) == 2
    # A joiner that waited for the next group was not embedded again, and the groups kept arrival order.
    assert sorted(recorder.embedded) == sorted(r.question for r in requests)
    # (Groups of at most two in arrival order: a job's group started no later than that of the job two
    # places after it.)
    starts = [job.first_token_at for job in jobs]
    assert all(a is not None and b is not None and a <= b for a, b in zip(starts, starts[2:], strict=False))


def test_joiners_put_back_after_close_are_refused_not_stranded(tiny_model: HealthGPT) -> None:
    engine = BatchEngine(tiny_model, EngineLimits(max_batch=2, prefill_budget_tokens=16))
    job = engine.submit(GenerationRequest("What is shown?", _image(30), max_new_tokens=2))
    job.result(60)
    engine.close()  # drains the queue; a group being formed then puts its rest back
    late = Job(request=GenerationRequest("Any effusion?", max_new_tokens=2), deadline=time.monotonic() + 60)
    engine._put_back([late])
    with pytest.raises(EngineClosed):
        late.result(1)
    assert engine.queue_length == 0


def test_the_slot_cache_moves_only_what_changes() -> None:
    heads, dim = 2, 3

    def prefill(rows: int, width: int, seed: int, real: list[int]) -> SlotCache:
        cache = SlotCache(slots=rows, rows=rows, capacity=width, block=width)
        columns = torch.zeros(rows, width, dtype=torch.bool)
        for i, length in enumerate(real):
            columns[i, width - length :] = True
        cache.begin(columns)
        values = torch.randn(rows, heads, width, dim, generator=torch.Generator().manual_seed(seed))
        cache.update(values, -values, 0)
        cache.commit()
        return cache

    main = SlotCache(slots=3, block=16)
    main.adopt(prefill(1, 5, 0, [5]), [0])
    layer = main.slot_layers[0]
    pointer = layer.key_buffer.data_ptr()
    for _ in range(3):  # decode steps write one column each
        mask = main.begin(None)
        keys, _ = main.update(torch.ones(1, heads, 1, dim), torch.ones(1, heads, 1, dim), 0)
        main.commit()
        assert mask.shape == (1, keys.shape[2])
    first_row = layer.key_buffer[0, :, main.start : main.end].clone()
    # A 4-token joiner (2 rows prefilled, the second cancelled) lands in slot 1, right-aligned.
    joiner = prefill(2, 4, 1, [4, 2])
    main.adopt(joiner, [0])
    assert (main.rows, layer.key_buffer.data_ptr(), main.regrids) == (2, pointer, 0)
    assert torch.equal(layer.key_buffer[0, :, main.start : main.end], first_row)
    assert torch.equal(layer.key_buffer[1, :, main.end - 4 : main.end], joiner.slot_layers[0].key_buffer[0])
    mask = main.begin(None)
    assert mask.tolist() == [[True] * 9, [False] * 4 + [True] * 5]
    main.update(torch.zeros(2, heads, 1, dim), torch.zeros(2, heads, 1, dim), 0)
    main.commit()
    # The first row leaves: the joiner's row moves into slot 0; the columns only it needed are dropped.
    joined_row = layer.key_buffer[1, :, main.end - 5 : main.end].clone()
    assert main.retain([1]) == [1]
    assert main.length == 5 and torch.equal(layer.key_buffer[0, :, main.start : main.end], joined_row)
    # Past the buffer's end the live window is copied once into bigger buffers, values kept.
    for _ in range(40):
        main.begin(None)
        main.update(torch.ones(1, heads, 1, dim), torch.ones(1, heads, 1, dim), 0)
        main.commit()
    assert main.regrids >= 1 and main.length == 45
    assert torch.equal(main.slot_layers[0].key_buffer[0, :, main.start : main.start + 5], joined_row)
