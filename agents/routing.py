"""The route table: who may do what. Deterministic and table-driven: the model never decides who you
are or what you may do, and nothing a user writes changes it."""

from __future__ import annotations

from enum import StrEnum


class Route(StrEnum):
    consult = "consult"
    second_read = "second_read"
    image_task = "image_task"
    history = "history"
    admin = "admin"
    escalate = "escalate"
    refuse = "refuse"


# (role, what is asked) -> (route, refusal reason or None)
TABLE: dict[tuple[str, str], tuple[Route, str | None]] = {
    ("patient", "consult"): (Route.consult, None),
    ("patient", "small_talk"): (Route.consult, None),
    ("patient", "history"): (Route.history, None),
    ("patient", "second_read"): (Route.consult, None),  # a patient asking about an image: a consult
    ("patient", "image_task"): (Route.refuse, "physician_only"),
    ("patient", "admin"): (Route.refuse, "admin_only"),
    ("physician", "consult"): (Route.consult, None),
    ("physician", "small_talk"): (Route.consult, None),
    ("physician", "history"): (Route.history, None),
    ("physician", "second_read"): (Route.second_read, None),
    ("physician", "image_task"): (Route.image_task, None),
    ("physician", "admin"): (Route.refuse, "admin_only"),
    ("admin", "admin"): (Route.admin, None),
    ("admin", "small_talk"): (Route.admin, None),
    ("admin", "consult"): (Route.admin, None),
    ("admin", "history"): (Route.refuse, "no_patient_data_for_admin"),
    ("admin", "second_read"): (Route.refuse, "no_patient_data_for_admin"),
    ("admin", "image_task"): (Route.refuse, "no_patient_data_for_admin"),
}


def route(role: str, request: str, intent: str, red_flag: bool) -> tuple[Route, str | None]:
    """Where a turn goes. A patient's red flag always escalates first; explicit API requests (second
    read, image task) outrank the message's intent."""
    if red_flag and role == "patient":
        return Route.escalate, None
    explicit = request in ("second_read", "image_task")
    asked = request if explicit else intent
    if role == "patient" and asked == "image_task" and not explicit:
        # Only an explicit image task is refused to a patient; words the intent screen takes for one
        # ("what is this scan?" with a DICOM attached) are a question about their picture: a consult.
        return Route.consult, None
    return TABLE.get(
        (role, asked), (Route.refuse, "admin_only" if role != "admin" else "no_patient_data_for_admin")
    )
