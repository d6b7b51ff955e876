"""The route table's edges that the scenario tests do not walk."""

from __future__ import annotations

from agents.routing import Route, route


def test_a_patient_asking_in_words_that_sound_like_an_image_task_gets_a_consult() -> None:
    assert route("patient", "message", "image_task", red_flag=False) == (Route.consult, None)
    # Asked for explicitly (the API's image_task request), it stays a physician's tool.
    assert route("patient", "image_task", "image_task", red_flag=False) == (Route.refuse, "physician_only")
    assert route("physician", "message", "image_task", red_flag=False) == (Route.image_task, None)
    # A red flag escalates first, whatever was asked.
    assert route("patient", "image_task", "image_task", red_flag=True) == (Route.escalate, None)
