"""The HealthGPT client protocol in-process, and the M3 → L14 cascade on two tiny models."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from PIL import Image
from pydantic import ValidationError

from models.healthgpt import HealthGPT
from models.spec import ModelSpec
from models.tiny import build_tiny
from tools.healthgpt import (
    AskRequest,
    CascadeHealthGPT,
    CascadeSettings,
    ImageRequest,
    ImageTask,
    InProcessHealthGPT,
    ScoreRequest,
)


def _png(color: tuple[int, int, int] = (90, 90, 90), size: tuple[int, int] = (48, 40)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def small(tiny_model: HealthGPT) -> InProcessHealthGPT:
    return InProcessHealthGPT(tiny_model)


@pytest.fixture(scope="module")
def large(tmp_path_factory: pytest.TempPathFactory) -> InProcessHealthGPT:
    spec = ModelSpec.from_yaml(build_tiny(tmp_path_factory.mktemp("large") / "tiny-seed1", seed=1))
    return InProcessHealthGPT(HealthGPT(spec))


def test_ask_reports_confidence_and_provenance(small: InProcessHealthGPT) -> None:
    result = small.ask(AskRequest(question="What is shown?", image=_png(), max_new_tokens=5))
    assert 1 <= len(result.token_ids) <= 5
    assert result.mean_logprob <= 0
    assert result.provenance.model == "tiny-seed0" and result.provenance.plugin == "comprehension"
    again = small.ask(AskRequest(question="What is shown?", image=_png(), max_new_tokens=5))
    assert again.token_ids == result.token_ids and again.mean_logprob == pytest.approx(result.mean_logprob)


def test_score_picks_the_choice_the_model_prefers(small: InProcessHealthGPT, tiny_model: HealthGPT) -> None:
    choices = ["yes", "no", "a mass in the left lung"]
    result = small.score(ScoreRequest(question="Is there a fracture?", choices=choices))
    assert [c.choice for c in result.choices] == choices
    expected = []
    for choice in choices:
        score = tiny_model.score("Is there a fracture?", choice)
        expected.append(score.sum_logprob / len(score.logprobs))
    assert [c.mean_logprob for c in result.choices] == pytest.approx(expected, abs=1e-5)
    assert result.best_index == max(range(3), key=expected.__getitem__)
    assert result.best == choices[result.best_index]


@pytest.mark.parametrize(
    "choices", [["yes"], ["yes", "yes"], ["yes", "  "]], ids=["one", "duplicate", "blank"]
)
def test_bad_choices_are_refused(choices: list[str]) -> None:
    with pytest.raises(ValidationError):
        ScoreRequest(question="q", choices=choices)


def test_image_tasks_need_what_they_need() -> None:
    with pytest.raises(ValueError, match="source image"):
        ImageRequest(task=ImageTask.ct_to_mri).prompt()
    with pytest.raises(ValueError, match="instruction"):
        ImageRequest(task=ImageTask.text_to_image).prompt()
    prompt = ImageRequest(task=ImageTask.mri_to_ct, image=b"x").prompt()
    assert prompt == "Convert the MRI image into a CT image."


def test_generate_image_gives_exactly_the_grid_and_stays_on_the_primary(
    official_tiny: Path, small: InProcessHealthGPT
) -> None:
    client = InProcessHealthGPT(HealthGPT(ModelSpec.from_yaml(official_tiny / "healthgpt.yaml")))
    source = (official_tiny / "image.png").read_bytes()
    # Only the primary (the M3 release) has a generation plugin; the cascade never escalates images.
    cascade = CascadeHealthGPT(client, small, CascadeSettings(enabled=True, min_mean_logprob=0.0))
    result = cascade.generate_image(ImageRequest(task=ImageTask.reconstruction, image=source))
    assert len(result.vq_indices) == 32 * 32
    with Image.open(io.BytesIO(result.png)) as image:
        assert image.format == "PNG" and image.size == (256, 256)
    assert (result.provenance.plugin, result.provenance.model) == ("generation", "official-tiny")


def _cascade(small, large, **settings) -> CascadeHealthGPT:
    return CascadeHealthGPT(small, large, CascadeSettings(enabled=True, **settings))


def test_a_confident_small_model_answers_alone(small, large) -> None:
    request = AskRequest(question="Describe the image.", image=_png(), max_new_tokens=4)
    result = _cascade(small, large, min_mean_logprob=-1e9).ask(request)
    assert result.provenance.model == "tiny-seed0" and result.provenance.escalated_from is None
    assert result.token_ids == small.ask(request).token_ids


def test_low_confidence_escalates_to_the_large_model(small, large) -> None:
    request = AskRequest(question="Describe the image.", image=_png(), max_new_tokens=4)
    first = small.ask(request)
    threshold = first.mean_logprob + 0.01  # just above what the small model reached
    result = _cascade(small, large, min_mean_logprob=min(0.0, threshold)).ask(request)
    assert result.provenance.model == "tiny-seed1"
    assert result.provenance.escalated_from == "tiny-seed0"
    assert "low confidence" in result.provenance.escalation_reason
    assert result.token_ids == large.ask(request).token_ids


def test_complex_cases_go_straight_to_the_large_model(small, large) -> None:
    request = AskRequest(question="Compare with the prior.", max_new_tokens=3, complex=True)
    result = _cascade(small, large, min_mean_logprob=-1e9).ask(request)
    assert (result.provenance.model, result.provenance.escalation_reason) == ("tiny-seed1", "flagged complex")
    score = _cascade(small, large).score(ScoreRequest(question="q?", choices=["a", "b"]), complex_case=True)
    assert score.provenance.model == "tiny-seed1"
    not_escalated = _cascade(small, large, escalate_complex=False, min_mean_logprob=-1e9).ask(request)
    assert not_escalated.provenance.model == "tiny-seed0"

    assert _cascade(small, large).info().model == "tiny-seed0+tiny-seed1"


def test_streaming_yields_the_answer_piece_by_piece(small, large) -> None:
    request = AskRequest(question="Describe the image.", image=_png(), max_new_tokens=8)
    chunks = list(small.ask_stream(request))
    result = chunks[-1].result
    assert result is not None and all(c.result is None for c in chunks[:-1])
    assert "".join(c.delta for c in chunks).strip() == result.text
    assert result.token_ids == small.ask(request).token_ids
    escalated = list(_cascade(small, large, min_mean_logprob=0.0).ask_stream(request))
    final = escalated[-1].result
    assert final.provenance.model == "tiny-seed1" and final.provenance.escalated_from == "tiny-seed0"
    assert "".join(c.delta for c in escalated).strip() == final.text


def test_closing_a_stream_early_cancels_the_request(small) -> None:
    stream = small.ask_stream(AskRequest(question="Describe every finding.", max_new_tokens=60))
    next(stream)
    stream.close()
    import time

    deadline = time.monotonic() + 10
    while small.engine.active and time.monotonic() < deadline:
        time.sleep(0.01)
    assert small.engine.active == 0


def test_control_characters_the_tokenizer_decodes_never_reach_a_reader(tiny_model: HealthGPT) -> None:
    """The tiny byte-level tokenizer decodes id 190 to NUL (PostgreSQL cannot store it) and 217 to ESC: a
    model made to emit only them answers, streamed and whole, with neither."""
    import torch

    model = HealthGPT(tiny_model.spec.model_copy(deep=True))  # its own weights, changed below
    nul, esc = 190, 217
    assert model.tokenizer.decode([nul]) == "\x00" and model.tokenizer.decode([esc]) == "\x1b"
    head = model.llm.get_output_embeddings()
    # A head of its own (not tied to the embedding) where only NUL and ESC score, with opposite signs:
    # whatever the hidden state, one of the two wins every step.
    rows = torch.zeros_like(head.weight)
    rows[nul], rows[esc] = 1.0, -1.0
    head.weight = torch.nn.Parameter(rows, requires_grad=False)
    client = InProcessHealthGPT(model)
    request = AskRequest(question="hello", max_new_tokens=4)
    whole = client.ask(request)
    assert set(whole.token_ids) <= {nul, esc}, whole.token_ids  # the model did emit them
    assert whole.text == "" and not any(ord(c) < 32 for c in whole.text)
    streamed = list(client.ask_stream(request))
    assert [chunk.result is not None for chunk in streamed] == [True]  # no empty pieces, only the result
    assert streamed[-1].result is not None and streamed[-1].result.text == ""
