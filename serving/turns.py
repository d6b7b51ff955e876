"""Running one agent turn for an authenticated caller: records access, uploads, the graph, streaming."""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Any

from langgraph.types import Command

from agents import (
    InputState,
    Intake,
    MessageTooLong,
    StoredStudy,
    StudyLink,
    TurnContext,
    TurnUploads,
    Upload,
    UploadRejected,
    check_message,
    start_screen,
    take_series,
    take_study,
    take_uploads,
)
from memory.db import transaction
from memory.records import AccessDenied, Conflict, InvalidInput, NotFound, Records
from memory.schema import Role, StudySource
from memory.users import Principal
from serving.problems import Problem, problem_for
from serving.services import GatewayServices
from tools.specialists import PendingScreen

log = logging.getLogger(__name__)


@contextmanager
def records_for(services: GatewayServices, principal: Principal) -> Iterator[Records]:
    """A transaction with the caller's view of the records; domain errors become problem answers."""
    try:
        with transaction(services.sessions) as session:
            yield Records(session, principal, admin_phi_access=services.settings.admin_phi_access)
    except (NotFound, AccessDenied) as exc:
        # A record the caller may not see answers like a missing one, whoever asks (denials are audited
        # in memory.records): its existence is not revealed.
        raise Problem(404, "not found") from exc
    except Conflict as exc:
        raise Problem(409, str(exc)) from exc
    except InvalidInput as exc:
        raise Problem(422, str(exc)) from exc


@dataclass
class TurnInput:
    message: str
    request: str = "message"  # message | second_read | image_task
    image_task: str | None = None
    study_id: int | None = None
    uploads: list[Upload] = field(default_factory=list)


def open_consultation(services: GatewayServices, principal: Principal, patient_id: int | None) -> str:
    consultation_id = uuid.uuid4().hex
    with records_for(services, principal) as records:
        if principal.role is Role.patient:
            own = records.patient_of_user(principal.user_id)
            if own is None:
                raise InvalidInput("this patient login has no patient record; ask an administrator")
            # Another patient's id goes on to the records, which refuse it and audit the attempt.
            patient_id = own.id if patient_id is None else patient_id
        try:
            records.open_consultation(consultation_id, patient_id)
        except NotFound as exc:
            if principal.role is Role.patient:  # a missing id answers exactly like another patient's
                raise Problem(404, "not found") from exc
            raise
    return consultation_id


# The agent's intake refuses an upload with a reason; the API answers it with this status.
_UPLOAD_STATUS = {"too_large": 413, "not_dicom": 415, "unreadable": 415, "unsupported": 415}


def _intake(services: GatewayServices, principal: Principal) -> Intake:
    return Intake(
        pixels=services.pixels,
        records=lambda: records_for(services, principal),
        deid_key=services.deid_key,
        burned_in=services.settings.burned_in,
        max_bytes=services.settings.max_upload_bytes,
        read_slices=services.settings.pacs.read_slices,
    )


@contextmanager
def _upload_problems() -> Iterator[None]:
    try:
        yield
    except UploadRejected as exc:
        raise Problem(_UPLOAD_STATUS.get(exc.reason, 422), str(exc)) from exc


def ingest_study(
    services: GatewayServices, principal: Principal, patient_id: int, upload: Upload
) -> StoredStudy:
    """A DICOM upload becomes a de-identified study, through the agent's intake."""
    with _upload_problems():
        return take_study(_intake(services, principal), patient_id, upload)


def ingest_series(
    services: GatewayServices,
    principal: Principal,
    patient_id: int,
    uploads: list[Upload],
    *,
    link: StudyLink | None = None,
) -> StoredStudy:
    """The instances of one series (a PACS import) become one de-identified study, through the same
    intake as an upload; ``link`` records where they came from in the study's transaction."""
    with _upload_problems():
        return take_series(
            _intake(services, principal), patient_id, uploads, source=StudySource.pacs, link=link
        )


def _take_uploads(
    services: GatewayServices, principal: Principal, patient_id: int | None, turn: TurnInput
) -> TurnUploads:
    with _upload_problems():
        return take_uploads(_intake(services, principal), patient_id, turn.uploads, turn.study_id)


@dataclass(frozen=True)
class _AdminFineTunes:
    """The fine-tune service as the agent's admin route sees it: jobs started for this turn's admin."""

    services: GatewayServices
    principal: Principal

    def start_for_turn(self, plugin: str) -> tuple[int, str]:
        from serving.finetune import JobRequest

        job = self.services.finetunes.submit(self.principal, JobRequest(plugin))
        return job.id, str(job.status)


def turn_context(
    services: GatewayServices,
    principal: Principal,
    image: bytes | None,
    screening: PendingScreen | None = None,
) -> TurnContext:
    admin = principal.role is Role.admin and services.finetunes is not None
    return TurnContext(
        image=image,
        max_new_tokens=services.settings.max_new_tokens,
        records=lambda: records_for(services, principal),
        pixels=services.pixels,
        finetunes=_AdminFineTunes(services, principal) if admin else None,
        screening=screening,
    )


def graph_input(
    principal: Principal,
    consultation_id: str,
    patient_id: int | None,
    turn: TurnInput,
    attachments: list[str],
    study_id: int | None,
) -> InputState:
    return {
        "messages": [{"role": "user", "content": turn.message}],
        "consultation_id": consultation_id,
        "actor": {"user_id": principal.user_id, "name": principal.name, "role": str(principal.role)},
        "patient_id": patient_id,
        "request": turn.request,
        "image_task": turn.image_task,
        "study_id": study_id,
        "attachments": attachments,
        "read_id": None,
        "approval": None,
    }


def config_for(consultation_id: str) -> dict[str, Any]:
    return {"configurable": {"thread_id": consultation_id}}


# Checkpoint once per turn, when the graph finishes or stops at the review interrupt, rather than after
# every node: a turn cut short by a crash is re-sent by the client (its message is already in SQL), and
# the side effect before the interrupt (the read row) is in the checkpoint the interrupt writes.
DURABILITY = "exit"


@dataclass
class BegunTurn:
    """A turn whose message is stored: what the graph needs, and what undoing the turn needs."""

    state_in: InputState
    context: TurnContext
    message_id: int
    before: Any  # the thread's checkpoint (StateSnapshot) before the turn


def begin_turn(
    services: GatewayServices, principal: Principal, consultation_id: str, turn: TurnInput
) -> BegunTurn:
    """Check access, store the user's message and uploads; what the graph needs to run the turn."""
    # With remote specialists, the message's screen is sent first and runs while this step checks
    # access, reads the checkpoint and stores the message; the graph's safety step takes its result. A
    # turn refused here drops it (nothing of a screen is stored or shown).
    screening = start_screen(services.graph, turn.message)
    try:
        # The message is counted in the model's tokens before anything is stored: one the model can never
        # take is refused alone, and the consultation goes on (the character cap cannot tell: a Chinese
        # character can be three tokens). That count and the thread's checkpoint are read before the
        # records transaction, whose first audit row locks the audit chain's head for every writer until
        # it commits (and the model may be a remote replica with a queue); both answers are acted on only
        # after the access check, in the order the caller would otherwise meet them.
        too_long: MessageTooLong | None = None
        try:
            has_image = bool(turn.uploads) or turn.study_id is not None
            check_message(services.model, turn.message, has_image=has_image)
        except MessageTooLong as exc:
            too_long = exc
        before = services.graph.get_state(config_for(consultation_id))
        with records_for(services, principal) as records:
            consultation = records.get_consultation(consultation_id)
            patient_id = consultation.patient_id
            if consultation.status.value != "open":
                raise Problem(409, "this consultation is closed")
            # A new message would abandon the read waiting in this thread: sign it off first.
            for pending in before.interrupts:
                read_id = (pending.value or {}).get("read_id")
                raise Problem(
                    409,
                    f"this consultation awaits sign-off of read {read_id}: POST /v1/reads/{read_id}/signoff",
                )
            if too_long is not None:
                raise Problem(413, str(too_long)) from too_long
            # The common case, a message with nothing attached: it is stored in this same transaction.
            plain = not turn.uploads and turn.study_id is None
            if plain:
                message_id = records.add_message(consultation_id, str(principal.role), turn.message).id
            # What a consultation's answer may draw on, read here rather than in a transaction of its
            # own in the consult step (read for every message, whichever way the graph then routes it).
            history = None
            if turn.request == "message" and patient_id is not None:
                history = tuple(records.history_texts(patient_id, exclude=consultation_id))
        taken = _take_uploads(services, principal, patient_id, turn)
        if not plain:
            with records_for(services, principal) as records:
                role = str(principal.role)
                message_id = records.add_message(
                    consultation_id, role, turn.message, attachments=taken.attachments
                ).id
    except BaseException:
        if screening is not None:
            screening.drop()
        raise
    state_in = graph_input(principal, consultation_id, patient_id, turn, taken.attachments, taken.study_id)
    context = replace(turn_context(services, principal, taken.image, screening), history=history)
    return BegunTurn(state_in, context, message_id, before)


def undo_turn(
    services: GatewayServices, principal: Principal, consultation_id: str, begun: BegunTurn
) -> None:
    """A failed turn leaves no orphan: its message is withdrawn from the records and the thread goes
    back to its checkpoint before the turn, so nothing of it returns to the model's context. (The
    consult step also skips unanswered messages, for a turn a crash cut short.)"""
    try:
        with records_for(services, principal) as records:
            records.withdraw_message(begun.message_id)
        after = services.graph.get_state(config_for(consultation_id))
        written = (after.parent_config or {}).get("configurable", {}).get("checkpoint_id")
        previous = begun.before.config.get("configurable", {}).get("checkpoint_id")
        if after.config == begun.before.config or written != previous:
            return  # the turn wrote no checkpoint, or another turn has run since: leave the thread
        if previous is None:
            services.checkpointer.saver.delete_thread(consultation_id)
        else:  # a copy of the checkpoint before the turn becomes the thread's latest
            services.graph.update_state(begun.before.config, None, as_node="__copy__")
    except Exception:  # the turn's own error is what the caller must see
        log.exception("could not undo a failed turn in consultation %s", consultation_id)


def finish_turn(
    services: GatewayServices, principal: Principal, consultation_id: str, state: dict[str, Any]
) -> dict[str, Any]:
    """Store the agent's answer; the turn's outcome as the API returns it."""
    pending = state.get("__interrupt__")
    result: dict[str, Any] = {
        "consultation_id": consultation_id,
        "route": state.get("route"),
        "triage": state.get("triage"),
        "escalated": bool(state.get("escalated")),
        "read_id": state.get("read_id"),
        "provenance": state.get("provenance"),
        "tool_results": state.get("tool_results") or {},
        "injection": state.get("injection") or [],
    }
    if pending:
        # The draft labelled preliminary (and demo, where it is), as the second-read step presented it.
        result.update(
            answer=state.get("answer") or state.get("draft", ""),
            disclaimer=state.get("disclaimer") or "",
            status="awaiting_signoff",
            message_id=None,
        )
        return result
    with records_for(services, principal) as records:
        message = records.add_message(
            consultation_id,
            "assistant",
            state["answer"],
            provenance=state.get("provenance"),
            attachments=[key] if (key := result["tool_results"].get("image_key")) else [],
        )
    result.update(
        answer=state["answer"], disclaimer=state["disclaimer"], status="answered", message_id=message.id
    )
    return result


def run_turn(
    services: GatewayServices, principal: Principal, consultation_id: str, turn: TurnInput
) -> dict[str, Any]:
    begun = begin_turn(services, principal, consultation_id, turn)
    try:
        state = services.graph.invoke(
            begun.state_in, config_for(consultation_id), context=begun.context, durability=DURABILITY
        )
        return finish_turn(services, principal, consultation_id, state)
    except BaseException:
        undo_turn(services, principal, consultation_id, begun)
        raise


def stream_turn(
    services: GatewayServices, principal: Principal, consultation_id: str, turn: TurnInput
) -> Iterator[tuple[str, dict[str, Any]]]:
    """(event, data) pairs: ``node`` as each node finishes, ``token`` as the model writes, ``done``.

    Access is checked and the message stored before this returns, so refusals are plain HTTP errors.
    A turn that fails once streaming ends with ``error`` (a problem+json object) instead of ``done``."""
    begun = begin_turn(services, principal, consultation_id, turn)
    return _stream(services, principal, consultation_id, begun)


def _stream(
    services: GatewayServices, principal: Principal, consultation_id: str, begun: BegunTurn
) -> Iterator[tuple[str, dict[str, Any]]]:
    config = config_for(consultation_id)
    outcome: dict[str, Any] | None = None
    error: dict[str, Any] | None = None
    events = services.graph.stream(
        begun.state_in,
        config,
        context=begun.context,
        stream_mode=["updates", "custom"],
        durability=DURABILITY,
    )
    try:
        for mode, payload in events:
            if mode == "custom" and "token" in payload:
                yield "token", {"text": payload["token"]}
            elif mode == "updates":
                for node in payload:
                    if node != "__interrupt__":
                        yield "node", {"node": node}
        state = services.graph.get_state(config)
        values = dict(state.values)
        if state.interrupts:
            values["__interrupt__"] = state.interrupts
        outcome = finish_turn(services, principal, consultation_id, values)
    except Exception as exc:  # noqa: BLE001 - every failure becomes the stream's error event
        # The status line (200) went out with the first event: the failure is the stream's last event.
        error = problem_of(exc)
    finally:
        # The graph's run ends (and writes its checkpoint) before the turn is undone; a client gone
        # mid-stream (GeneratorExit) also ends it here, and its turn did not happen either.
        events.close()
        if outcome is None:
            undo_turn(services, principal, consultation_id, begun)
    if error is not None:
        yield "error", error
    else:
        yield "done", outcome


def problem_of(exc: Exception) -> dict[str, Any]:
    """The problem+json object the API would answer ``exc`` with: a streamed turn's ``error`` event."""
    return json.loads(bytes(problem_for(exc).body))


def resume_review(
    services: GatewayServices, principal: Principal, read_id: int, action: str, text: str | None
) -> dict[str, Any]:
    """A physician signs or corrects an AI read: the waiting thread resumes at its review step."""
    with records_for(services, principal) as records:
        read = records.get_read(read_id)
        consultation_id = (read.provenance or {}).get("consultation_id")
        if consultation_id:
            records.get_consultation(consultation_id)  # the caller may resume only a thread they may see
        status = read.status.value
    if not consultation_id:
        raise Problem(409, "this read was not produced by a review workflow")
    config = config_for(consultation_id)
    snapshot = services.graph.get_state(config)
    waiting = [i for i in snapshot.interrupts if (i.value or {}).get("read_id") == read_id]
    if not waiting:
        raise Problem(409, f"read {read_id} is not awaiting sign-off (status {status})")
    context = turn_context(services, principal, None)
    decision = Command(resume={"action": action, "text": text})
    state = services.graph.invoke(decision, config, context=context, durability=DURABILITY)
    return finish_turn(services, principal, consultation_id, state)
