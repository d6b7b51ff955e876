"""Repositories for the system's records. Every call takes the acting principal, checks the access
policy, and writes an audit row: allowed accesses in the caller's transaction, denials in their own
(so a denial is recorded even though the caller's work rolls back).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import func, or_, select
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.orm.util import identity_key

from memory import audit
from memory.policy import PATIENT_DATA, Action, Relation, Resource, decide
from memory.schema import (
    AdapterStatus,
    AdapterVersion,
    ApiToken,
    AuthorRole,
    CareTeamMember,
    Consultation,
    ConsultationStatus,
    DerivedImage,
    DerivedStatus,
    Feedback,
    FeedbackKind,
    FineTuneJob,
    FineTuneJobEvent,
    JobStatus,
    Message,
    Notification,
    PacsImport,
    Patient,
    Read,
    ReadStatus,
    Role,
    Study,
    StudySource,
    User,
    utcnow,
)
from memory.users import Principal, add_token

MAX_PAYLOAD_BYTES = 64 * 1024
# session.info key: (the transaction, {(actor id, role, patient id): relation}) — see Records._relation
_RELATIONS = "records_relations"
MAX_TEXT_CHARS = 100_000


class RecordError(Exception):
    """A domain error with a message fit for the caller."""


class NotFound(RecordError):
    pass


class AccessDenied(RecordError):
    pass


class InvalidInput(RecordError):
    pass


@dataclass(frozen=True)
class FeedbackAggregate:
    plugin: str
    adapter_version: str
    kind: str
    count: int


@dataclass(frozen=True)
class TrainingFeedback:
    """One correction or rating with what a training dataset needs; no patient id travels with it."""

    feedback_id: int
    kind: str  # "correction" | "rating"
    payload: dict[str, Any]
    author_role: str  # who gave it: a physician's correction is clinical ground truth, a patient's is not
    model: str
    adapter_version: str  # the version that produced the output the feedback is about
    created_at: datetime  # UTC
    read_id: int | None  # the target: a read, or else a message
    message_id: int | None
    output: str  # the model's text: the read's AI draft, or the answer message
    final: str | None  # a read's latest signed text (the physician's correction, amendments included)
    question: str | None  # a message's question: the user's message it answered (reads: None)
    study_id: int | None
    modality: str
    pixel_key: str | None  # the de-identified picture the model saw: the study's, or the question's upload
    consultation_id: str | None
    provenance: dict[str, Any]  # of the output


class Records:
    """The records as ``actor`` may see them, within ``session``'s transaction."""

    def __init__(self, session: Session, actor: Principal, *, admin_phi_access: bool = False) -> None:
        self.session = session
        self.actor = actor
        self.admin_phi_access = admin_phi_access
        # Rows this object fetched, held for its transaction: the session's identity map keeps only weak
        # references, and the access checks that follow a fetch find the same rows there without a query.
        self._held: list[object] = []

    # -- policy -------------------------------------------------------------------------------------
    def _known_relations(self) -> dict[tuple[int, Role, int], Relation]:
        """Relations already looked up in this session's current transaction, shared by every Records on
        the session: a turn checks the same patient several times, and only a care-team change (which
        clears this) can alter the answer meanwhile. A new transaction starts afresh."""
        root = self.session.get_transaction()
        held = self.session.info.get(_RELATIONS)
        if held is None or held[0] is not root:
            held = self.session.info[_RELATIONS] = (root, {})
        return held[1]

    def _relation(self, patient_id: int | None) -> Relation:
        if patient_id is None:
            return Relation.not_patient_data
        if self.session.get_transaction() is None:  # no transaction yet: nothing to scope a memo to
            return self._look_up_relation(patient_id)
        known = self._known_relations()
        key = (self.actor.user_id, self.actor.role, patient_id)
        relation = known.get(key)
        if relation is None:
            relation = known[key] = self._look_up_relation(patient_id)
        return relation

    def _look_up_relation(self, patient_id: int) -> Relation:
        if self.actor.role is Role.patient:
            # Through the identity map: a call that loaded the patient already answers without a query.
            patient = self.session.get(Patient, patient_id)
            owner = patient.user_id if patient is not None else None
            return Relation.own if owner == self.actor.user_id else Relation.none
        if self.actor.role is Role.physician:
            member = self.session.scalar(
                select(CareTeamMember.patient_id).where(
                    CareTeamMember.physician_id == self.actor.user_id, CareTeamMember.patient_id == patient_id
                )
            )
            return Relation.care_team if member is not None else Relation.none
        return Relation.none

    def _deny(
        self,
        resource: Resource,
        action: Action,
        resource_id: object,
        patient_id: int | None,
        why: str,
        error: RecordError | None = None,
    ) -> None:
        """Audit a refusal, then raise it: ``error``, or AccessDenied."""
        # Recorded in its own transaction: the caller's will roll back on the exception.
        factory = sessionmaker(bind=self.session.get_bind())
        with factory() as side, side.begin():
            self._audit(resource, action, resource_id, patient_id, session=side, outcome="denied",
                        detail={"reason": why})  # fmt: skip
        raise error or AccessDenied(f"{self.actor.role} may not {action} {resource} {resource_id}: {why}")

    def _authorize(
        self, resource: Resource, action: Action, resource_id: object = "", patient_id: int | None = None
    ) -> None:
        relation = self._relation(patient_id) if resource in PATIENT_DATA else Relation.not_patient_data
        decision = decide(self.actor.role, resource, action, relation, admin_phi_access=self.admin_phi_access)
        if not decision.allowed:
            self._deny(resource, action, resource_id, patient_id, decision.reason)
        self._audit(resource, action, resource_id, patient_id)

    def _audit(
        self,
        resource: Resource,
        action: Action,
        resource_id: object = "",
        patient_id: int | None = None,
        *,
        session: Session | None = None,
        outcome: str = "allowed",
        detail: dict[str, Any] | None = None,
    ) -> None:
        """The one way a repository writes the audit log: ``<resource>.<action>`` by this actor."""
        audit.append(session or self.session, actor=self.actor, action=f"{resource}.{action}",
                     resource=str(resource), resource_id=str(resource_id), patient_id=patient_id,
                     outcome=outcome, detail=detail)  # fmt: skip

    def _get(self, model: type, key: object, what: str) -> Any:
        row = self.session.get(model, key)
        if row is None:
            raise NotFound(f"no {what} {key}")
        self._held.append(row)
        return row

    def _consultation(self, consultation_id: str) -> Consultation:
        """A consultation, for a patient with its patient row in the same query: the access check that
        follows reads the owner from the identity map instead of asking the database again."""
        loaded = identity_key(Consultation, consultation_id) in self.session.identity_map
        if loaded or self.actor.role is not Role.patient:
            return self._get(Consultation, consultation_id, "consultation")
        row = self.session.execute(
            select(Consultation, Patient)
            .outerjoin(Patient, Patient.id == Consultation.patient_id)
            .where(Consultation.id == consultation_id)
        ).first()
        if row is None:
            raise NotFound(f"no consultation {consultation_id}")
        self._held.extend(row)
        return row[0]

    # -- users, patients, care teams (admin) --------------------------------------------------------
    def create_user(self, name: str, role: Role, expires_in: timedelta | None = None) -> tuple[User, str]:
        """A new user and their first API token (returned once; only its hash is kept), valid for
        ``expires_in`` or until revoked."""
        self._authorize(Resource.user, Action.write, f"user:{name}")
        if self.session.scalar(select(User.id).where(User.name == name)) is not None:
            raise InvalidInput(f"a user named {name!r} exists already")
        user = User(name=_text(name, 200, "name"), role=Role(role), disabled=False)
        self.session.add(user)
        self.session.flush()
        _, token = add_token(self.session, user.id, label="initial", expires_in=expires_in)
        return user, token

    def issue_token(self, user_id: int, label: str = "", expires_in: timedelta | None = None) -> str:
        """One more API token for a user (a second device, a script, a rotation), returned once."""
        user = self._get(User, user_id, "user")
        self._authorize(Resource.user, Action.write, f"user:{user.name}:token")
        if user.disabled:
            raise InvalidInput(f"user {user.name!r} is disabled")
        _, token = add_token(self.session, user.id, label=_text(label, 100, "label"), expires_in=expires_in)
        return token

    def list_users(self) -> list[tuple[User, int, int | None]]:
        """Every user with their count of live tokens and their patient record id (if any)."""
        self._authorize(Resource.user, Action.read, "users")
        live = (
            select(ApiToken.user_id, func.count().label("n"))
            .where(ApiToken.revoked_at.is_(None))
            .where(or_(ApiToken.expires_at.is_(None), ApiToken.expires_at > utcnow()))
            .group_by(ApiToken.user_id)
            .subquery()
        )
        rows = self.session.execute(
            select(User, func.coalesce(live.c.n, 0), Patient.id)
            .outerjoin(live, live.c.user_id == User.id)
            .outerjoin(Patient, Patient.user_id == User.id)
            .order_by(User.id)
        )
        return [(user, int(tokens), patient_id) for user, tokens, patient_id in rows]

    def revoke_tokens(self, user_id: int) -> int:
        """Revoke every live token of a user (effective at the next request: tokens are checked each
        time); the count revoked. The user stays, so their records and audit trail do too."""
        user = self._get(User, user_id, "user")
        self._authorize(Resource.user, Action.write, f"user:{user.name}:revoke")
        now = utcnow()
        tokens = self.session.scalars(
            select(ApiToken).where(ApiToken.user_id == user_id, ApiToken.revoked_at.is_(None))
        ).all()
        for token in tokens:
            token.revoked_at = now
        self.session.flush()
        return len(tokens)

    def create_patient(self, display_name: str, user_id: int | None = None) -> Patient:
        self._authorize(Resource.user, Action.write, f"patient:{display_name}")
        if user_id is not None:
            user = self._get(User, user_id, "user")
            if user.role is not Role.patient:
                raise InvalidInput(f"user {user_id} is a {user.role}, not a patient")
        patient = Patient(display_name=_text(display_name, 200, "display_name"), user_id=user_id)
        self.session.add(patient)
        self.session.flush()
        return patient

    def add_to_care_team(self, physician_id: int, patient_id: int) -> None:
        self._authorize(Resource.care_team, Action.write, f"{physician_id}:{patient_id}")
        physician = self._get(User, physician_id, "user")
        if physician.role is not Role.physician:
            raise InvalidInput(f"user {physician_id} is a {physician.role}, not a physician")
        self._get(Patient, patient_id, "patient")
        if self.session.get(CareTeamMember, (physician_id, patient_id)) is None:
            self.session.add(CareTeamMember(physician_id=physician_id, patient_id=patient_id))
            self.session.flush()
            self.session.info.pop(_RELATIONS, None)

    def get_patient(self, patient_id: int) -> Patient:
        patient = self._get(Patient, patient_id, "patient")
        self._authorize(Resource.patient, Action.read, patient_id, patient_id)
        return patient

    def update_patient(self, patient_id: int, display_name: str) -> Patient:
        patient = self._get(Patient, patient_id, "patient")
        self._authorize(Resource.patient, Action.write, patient_id, patient_id)
        patient.display_name = _text(display_name, 200, "display_name")
        self.session.flush()
        return patient

    def patient_of_user(self, user_id: int) -> Patient | None:
        return self.session.scalar(select(Patient).where(Patient.user_id == user_id))

    # -- consultations and messages -----------------------------------------------------------------
    def open_consultation(self, consultation_id: str, patient_id: int | None) -> Consultation:
        if patient_id is not None:
            if self.session.get(Patient, patient_id) is None:
                # A refused creation is audited like any refused access, a probe for ids included.
                self._deny(Resource.consultation, Action.write, consultation_id, None,
                           f"no patient {patient_id}", NotFound(f"no patient {patient_id}"))  # fmt: skip
            self._authorize(Resource.consultation, Action.write, consultation_id, patient_id)
        elif self.actor.role is Role.patient:
            raise InvalidInput("a patient's consultation belongs to their patient record")
        else:  # a staff conversation about no patient holds no PHI
            self._audit(Resource.consultation, Action.write, consultation_id)
        if self.session.get(Consultation, consultation_id) is not None:
            raise InvalidInput(f"consultation {consultation_id} exists already")
        consultation = Consultation(id=consultation_id, patient_id=patient_id, opened_by=self.actor.user_id)
        self.session.add(consultation)
        self.session.flush()
        return consultation

    def get_consultation(self, consultation_id: str) -> Consultation:
        consultation = self._consultation(consultation_id)
        self._authorize_consultation(consultation, Action.read)
        return consultation

    def _authorize_consultation(self, consultation: Consultation, action: Action) -> None:
        if consultation.patient_id is None:
            if consultation.opened_by != self.actor.user_id:
                self._deny(Resource.consultation, action, consultation.id, None, "not your conversation")
            return
        self._authorize(Resource.consultation, action, consultation.id, consultation.patient_id)

    def add_message(
        self,
        consultation_id: str,
        author_role: AuthorRole | str,
        content: str,
        *,
        attachments: list[str] | None = None,
        provenance: dict[str, Any] | None = None,
    ) -> Message:
        consultation = self._consultation(consultation_id)
        self._authorize_consultation(consultation, Action.write)
        try:
            author_role = AuthorRole(author_role)
        except ValueError as exc:
            raise InvalidInput(f"unknown author role {author_role!r}") from exc
        message = Message(
            consultation_id=consultation_id,
            author_id=self.actor.user_id if author_role is not AuthorRole.assistant else None,
            author_role=author_role,
            content=_text(content, MAX_TEXT_CHARS, "content"),
            attachments=list(attachments or []),
            provenance=_payload(provenance, "provenance") if provenance is not None else None,
        )
        self.session.add(message)
        self.session.flush()
        return message

    def withdraw_message(self, message_id: int) -> None:
        """Take back the caller's own message of a turn that failed: no unanswered message stays in
        the consultation, nor in what retrieval reads of it."""
        message = self._get(Message, message_id, "message")
        self._authorize_consultation(self._consultation(message.consultation_id),
                                     Action.write)  # fmt: skip
        if message.author_role == AuthorRole.assistant or message.author_id != self.actor.user_id:
            raise InvalidInput("only its author may withdraw a message")
        self.session.delete(message)
        self.session.flush()

    def list_messages(self, consultation_id: str) -> list[Message]:
        consultation = self._consultation(consultation_id)
        self._authorize_consultation(consultation, Action.read)
        return list(
            self.session.scalars(
                select(Message).where(Message.consultation_id == consultation_id).order_by(Message.id)
            )
        )

    def list_consultations(self, patient_id: int) -> list[Consultation]:
        self._get(Patient, patient_id, "patient")
        self._authorize(Resource.consultation, Action.read, f"patient:{patient_id}", patient_id)
        return list(
            self.session.scalars(
                select(Consultation)
                .where(Consultation.patient_id == patient_id)
                .order_by(Consultation.created_at)
            )
        )

    def history_texts(
        self, patient_id: int, *, exclude: str | None = None, limit: int = 10
    ) -> list[tuple[str, str, str]]:
        """The patient's own words in their recent consultations and their signed reads, as
        ``(record id, text, kind)``: what retrieval may search. One access, one audit row."""
        self._get(Patient, patient_id, "patient")
        self._authorize(Resource.consultation, Action.read, f"patient:{patient_id}:history", patient_id)
        consultations = list(
            self.session.scalars(
                select(Consultation.id)
                .where(Consultation.patient_id == patient_id, Consultation.id != (exclude or ""))
                .order_by(Consultation.created_at.desc())
                .limit(limit)
            )
        )
        texts: list[tuple[str, str, str]] = []
        if consultations:
            rows = self.session.execute(
                select(Message.consultation_id, Message.content)
                .where(Message.consultation_id.in_(consultations), Message.author_role == AuthorRole.patient)
                .order_by(Message.id)
            )
            said: dict[str, list[str]] = {}
            for consultation_id, content in rows:
                said.setdefault(consultation_id, []).append(content)
            texts += [
                (f"consultation:{c}", " ".join(said[c])[:2000], "consultation")
                for c in consultations
                if c in said
            ]
        reads = self.session.execute(
            select(Read.id, Read.physician_final)
            .join(Study, Study.id == Read.study_id)
            .where(Study.patient_id == patient_id, Read.status != ReadStatus.preliminary)
            .order_by(Read.id.desc())
            .limit(limit)
        )
        texts += [
            (f"read:{read_id}", (final or "")[:2000], "signed read") for read_id, final in reads if final
        ]
        return texts

    def flag_consultation(self, consultation_id: str, reason: str) -> Consultation:
        """Mark a consultation as escalated (red flag); the first flag's time is kept."""
        consultation = self._consultation(consultation_id)
        self._authorize_consultation(consultation, Action.write)
        consultation.flag = _text(reason, 200, "reason")
        consultation.flagged_at = consultation.flagged_at or utcnow()
        self.session.flush()
        return consultation

    def notify_care_team(self, consultation_id: str, kind: str, text: str) -> list[int]:
        """Tell every physician caring for the consultation's patient; returns their user ids.

        The text goes to physicians of this patient only, so it may name the consultation (no more)."""
        consultation = self._consultation(consultation_id)
        self._authorize_consultation(consultation, Action.write)
        if consultation.patient_id is None:
            return []
        physicians = list(
            self.session.scalars(
                select(CareTeamMember.physician_id).where(
                    CareTeamMember.patient_id == consultation.patient_id
                )
            )
        )
        kind, text = _text(kind, 32, "kind"), _text(text, 2000, "text")
        for physician in physicians:
            note = Notification(user_id=physician, consultation_id=consultation_id, kind=kind, text=text)
            self.session.add(note)
        self._audit(Resource.notification, Action.write, consultation_id, consultation.patient_id,
                    detail={"recipients": physicians, "kind": kind})  # fmt: skip
        self.session.flush()
        return physicians

    def my_notifications(self) -> list[Notification]:
        """The caller's own notifications (nobody reads another user's)."""
        return list(
            self.session.scalars(
                select(Notification)
                .where(Notification.user_id == self.actor.user_id)
                .order_by(Notification.id)
            )
        )

    def close_consultation(self, consultation_id: str) -> Consultation:
        consultation = self._consultation(consultation_id)
        self._authorize_consultation(consultation, Action.write)
        consultation.status, consultation.closed_at = ConsultationStatus.closed, utcnow()
        self.session.flush()
        return consultation

    def delete_consultation(self, consultation_id: str) -> None:
        """Erasure of the SQL side; the caller also deletes the LangGraph thread (memory.erasure)."""
        consultation = self._consultation(consultation_id)
        self._authorize_consultation(consultation, Action.write)
        self.session.delete(consultation)
        self.session.flush()

    # -- studies and reads --------------------------------------------------------------------------
    def add_study(
        self,
        patient_id: int,
        *,
        modality: str = "",
        description: str = "",
        metadata: dict[str, Any] | None = None,
        pixel_key: str | None = None,
        source: StudySource = StudySource.upload,
    ) -> Study:
        self._get(Patient, patient_id, "patient")
        self._authorize(Resource.study, Action.write, "new", patient_id)
        study = Study(
            patient_id=patient_id,
            modality=_text(modality, 16, "modality"),
            description=_text(description, 400, "description"),
            deidentified_metadata=_payload(metadata or {}, "metadata"),
            pixel_key=pixel_key,
            source=source,
        )
        self.session.add(study)
        self.session.flush()
        return study

    def get_study(self, study_id: int) -> Study:
        study = self._get(Study, study_id, "study")
        self._authorize(Resource.study, Action.read, study_id, study.patient_id)
        return study

    def list_studies(self, patient_id: int) -> list[Study]:
        self._get(Patient, patient_id, "patient")
        self._authorize(Resource.study, Action.read, f"patient:{patient_id}", patient_id)
        return list(
            self.session.scalars(select(Study).where(Study.patient_id == patient_id).order_by(Study.id))
        )

    def list_reads(self, study_id: int) -> list[Read]:
        """A study's reads as the caller may see them: patients see signed reads only."""
        study = self.get_study(study_id)
        query = select(Read).where(Read.study_id == study.id).order_by(Read.id)
        if self.actor.role is Role.patient:
            query = query.where(Read.status != ReadStatus.preliminary)
        return list(self.session.scalars(query))

    def add_read(self, study_id: int, ai_draft: str, provenance: dict[str, Any]) -> Read:
        """An AI read: always preliminary until a physician signs."""
        study = self._get(Study, study_id, "study")
        self._authorize(Resource.read, Action.write, f"study:{study_id}", study.patient_id)
        read = Read(study_id=study_id, ai_draft=_text(ai_draft, MAX_TEXT_CHARS, "ai_draft"),
                    provenance=_payload(provenance, "provenance"))  # fmt: skip
        self.session.add(read)
        self.session.flush()
        return read

    def get_read(self, read_id: int) -> Read:
        read = self._get(Read, read_id, "read")
        patient_id = self.session.scalar(select(Study.patient_id).where(Study.id == read.study_id))
        if self.actor.role is Role.patient and read.status is ReadStatus.preliminary:
            self._deny(Resource.read, Action.read, read_id, patient_id, "not yet signed by a physician")
        self._authorize(Resource.read, Action.read, read_id, patient_id)
        return read

    def sign_read(self, read_id: int, final_text: str) -> Read:
        read = self._get(Read, read_id, "read")
        patient_id = self.session.scalar(select(Study.patient_id).where(Study.id == read.study_id))
        self._authorize(Resource.read, Action.sign, read_id, patient_id)
        read.status = ReadStatus.amended if read.status is not ReadStatus.preliminary else ReadStatus.final
        read.physician_final = _text(final_text, MAX_TEXT_CHARS, "final_text")
        read.signed_by = self.actor.user_id
        read.signed_at = utcnow()
        # Who wrote the final text travels with it, so it is never shown as the model's words: the AI
        # draft signed as it is, or the physician's own text. The model keys stay: they describe the
        # draft, and feedback on the read is attributed through them. (A new dict: JSON is not tracked.)
        author = "ai+physician" if final_text.strip() == read.ai_draft.strip() else "physician"
        signer = {"user_id": self.actor.user_id, "name": self.actor.name}
        read.provenance = {**(read.provenance or {}), "author": author, "signed_by": signer}
        self.session.flush()
        return read

    # -- feedback -----------------------------------------------------------------------------------
    def add_feedback(
        self,
        kind: FeedbackKind | str,
        payload: dict[str, Any],
        *,
        message_id: int | None = None,
        read_id: int | None = None,
    ) -> Feedback:
        """Feedback on one model output; the model, plugin and adapter version come from the target."""
        if (message_id is None) == (read_id is None):
            raise InvalidInput("feedback targets exactly one message or one read")
        try:
            kind = FeedbackKind(kind)
        except ValueError as exc:
            raise InvalidInput(f"unknown feedback kind {kind!r}") from exc
        if message_id is not None:
            message = self._get(Message, message_id, "message")
            patient_id = self.session.scalar(
                select(Consultation.patient_id).where(Consultation.id == message.consultation_id)
            )
            provenance = message.provenance
        else:
            read = self._get(Read, read_id, "read")
            patient_id = self.session.scalar(select(Study.patient_id).where(Study.id == read.study_id))
            provenance = read.provenance
        if patient_id is None:
            raise InvalidInput("feedback is kept for patient consultations and reads only")
        # A read's provenance keeps its draft's model even once corrected; a message a physician
        # wrote (a correction given as the answer) has no model behind it.
        if not provenance or (message_id is not None and provenance.get("author") == "physician"):
            raise InvalidInput("the target was not produced by a model: nothing to attribute feedback to")
        target = f"message:{message_id}" if message_id is not None else f"read:{read_id}"
        self._authorize(Resource.feedback, Action.write, target, patient_id)
        feedback = Feedback(
            target_message_id=message_id,
            target_read_id=read_id,
            patient_id=patient_id,
            author_id=self.actor.user_id,
            kind=kind,
            payload=_payload(payload, "payload"),
            model=str(provenance.get("model", "")),
            plugin=str(provenance.get("plugin", "")),
            adapter_version=str(provenance.get("adapter_version", "")),
        )
        self.session.add(feedback)
        self.session.flush()
        return feedback

    def list_feedback(self, patient_id: int) -> list[Feedback]:
        self._get(Patient, patient_id, "patient")
        self._authorize(Resource.feedback, Action.read, f"patient:{patient_id}", patient_id)
        return list(self.session.scalars(select(Feedback).where(Feedback.patient_id == patient_id)))

    def verify_audit(self) -> audit.Verification:
        self._authorize(Resource.audit, Action.read, "chain")
        return audit.verify(self.session)

    def feedback_aggregates(self) -> list[FeedbackAggregate]:
        """Counts per plugin, adapter version and kind: what an admin sees, without PHI."""
        self._authorize(Resource.feedback_aggregate, Action.read)
        rows = self.session.execute(
            select(Feedback.plugin, Feedback.adapter_version, Feedback.kind, func.count())
            .group_by(Feedback.plugin, Feedback.adapter_version, Feedback.kind)
            .order_by(Feedback.plugin, Feedback.adapter_version, Feedback.kind)
        )
        return [FeedbackAggregate(p, v, str(k), int(n)) for p, v, k, n in rows]

    def training_feedback(
        self, plugin: str, *, since_version: str | None = None, since: datetime | None = None
    ) -> list[TrainingFeedback]:
        """Corrections and ratings of ``plugin``'s outputs, oldest first, given at or after ``since`` and
        after ``since_version`` came in (its registration or its first feedback, whichever is earlier).

        Building a training dataset is a system action for admins over de-identified studies: no patient
        id is returned, and every patient whose feedback is read gets an audit row."""
        target = f"training:{plugin}"
        if self.actor.role is not Role.admin:
            self._deny(Resource.feedback, Action.read, target, None, "only admins build training datasets")
        cutoffs = [_as_utc(since)] if since is not None else []
        if since_version is not None:
            cutoffs.append(self._version_start(plugin, since_version))
        query = (
            select(Feedback, User.role)
            .join(User, User.id == Feedback.author_id)
            .where(
                Feedback.plugin == plugin,
                Feedback.kind.in_([FeedbackKind.correction, FeedbackKind.rating]),
            )
            .order_by(Feedback.id)
        )
        if cutoffs:
            query = query.where(Feedback.created_at >= max(cutoffs))
        found: list[TrainingFeedback] = []
        patients: dict[int, int] = {}
        for feedback, role in self.session.execute(query).all():
            patients[feedback.patient_id] = patients.get(feedback.patient_id, 0) + 1
            found.append(self._training_item(feedback, str(role)))
        for patient_id, count in sorted(patients.items()):
            self._audit(Resource.feedback, Action.read, target, patient_id,
                        detail={"purpose": "training dataset", "feedback": count})  # fmt: skip
        self._audit(Resource.feedback, Action.read, target, detail={
            "purpose": "training dataset", "since_version": since_version,
            "since": since.isoformat() if since else None, "feedback": len(found)})  # fmt: skip
        return found

    def _version_start(self, plugin: str, version: str) -> datetime:
        registered = self.session.scalar(
            select(AdapterVersion.created_at).where(
                AdapterVersion.plugin == plugin, AdapterVersion.version == version
            )
        )
        first = self.session.scalar(
            select(func.min(Feedback.created_at)).where(
                Feedback.plugin == plugin, Feedback.adapter_version == version
            )
        )
        moments = [_as_utc(m) for m in (registered, first) if m is not None]
        if not moments:
            raise NotFound(f"adapter version {version!r} of {plugin!r} is neither registered nor in feedback")
        return min(moments)

    def _training_item(self, feedback: Feedback, author_role: str) -> TrainingFeedback:
        common: dict[str, Any] = {
            "feedback_id": feedback.id,
            "kind": str(feedback.kind),
            "payload": dict(feedback.payload or {}),
            "author_role": author_role,
            "model": feedback.model,
            "adapter_version": feedback.adapter_version,
            "created_at": _as_utc(feedback.created_at),
        }
        if feedback.target_read_id is not None:
            read = self._get(Read, feedback.target_read_id, "read")
            study = self._get(Study, read.study_id, "study")
            return TrainingFeedback(
                **common,
                read_id=read.id,
                message_id=None,
                output=read.ai_draft,
                final=read.physician_final,
                question=None,
                study_id=study.id,
                modality=study.modality,
                pixel_key=study.pixel_key,
                consultation_id=None,
                provenance=dict(read.provenance or {}),
            )
        message = self._get(Message, feedback.target_message_id, "message")
        asked = self.session.scalar(  # the user's message it answered
            select(Message)
            .where(
                Message.consultation_id == message.consultation_id,
                Message.id < message.id,
                Message.author_role != AuthorRole.assistant,
            )
            .order_by(Message.id.desc())
            .limit(1)
        )
        return TrainingFeedback(
            **common,
            read_id=None,
            message_id=message.id,
            output=message.content,
            final=None,
            question=asked.content if asked is not None else None,
            study_id=None,
            modality="",
            pixel_key=(asked.attachments or [None])[0] if asked is not None else None,
            consultation_id=message.consultation_id,
            provenance=dict(message.provenance or {}),
        )

    # -- adapters and fine-tune jobs (admin) --------------------------------------------------------
    def register_adapter(
        self,
        plugin: str,
        version: str,
        files: list[str],
        *,
        parent_id: int | None = None,
        metrics: dict[str, Any] | None = None,
        path: str | None = None,
        sha256: str | None = None,
        status: AdapterStatus = AdapterStatus.candidate,
        gate_passed: bool | None = None,
    ) -> AdapterVersion:
        self._authorize(Resource.adapter, Action.write, f"{plugin}:{version}")
        if parent_id is not None:
            self._get(AdapterVersion, parent_id, "adapter version")
        existing = self.session.scalar(
            select(AdapterVersion).where(AdapterVersion.plugin == plugin, AdapterVersion.version == version)
        )
        if existing is not None:
            raise InvalidInput(f"adapter {plugin} {version} exists already; versions are immutable")
        adapter = AdapterVersion(
            plugin=plugin,
            version=version,
            files=list(files),
            parent_id=parent_id,
            metrics=_payload(metrics or {}, "metrics"),
            path=path,
            sha256=sha256,
            status=status,
            gate_passed=gate_passed,
            promoted_at=utcnow() if status is AdapterStatus.champion else None,
        )
        self.session.add(adapter)
        self.session.flush()
        return adapter

    def set_adapter_status(self, adapter_id: int, status: AdapterStatus) -> AdapterVersion:
        adapter = self._get(AdapterVersion, adapter_id, "adapter version")
        self._authorize(Resource.adapter, Action.write, adapter_id)
        if status is AdapterStatus.champion:  # one champion per plugin
            for other in self.session.scalars(
                select(AdapterVersion).where(
                    AdapterVersion.plugin == adapter.plugin, AdapterVersion.status == AdapterStatus.champion
                )
            ):
                other.status = AdapterStatus.retired
            adapter.promoted_at = utcnow()
        adapter.status = status
        self.session.flush()
        return adapter

    def list_adapters(self, plugin: str | None = None) -> list[AdapterVersion]:
        self._authorize(Resource.adapter, Action.read, plugin or "*")
        query = select(AdapterVersion).order_by(AdapterVersion.id)
        if plugin is not None:
            query = query.where(AdapterVersion.plugin == plugin)
        return list(self.session.scalars(query))

    def champion(self, plugin: str) -> AdapterVersion | None:
        """The version of ``plugin`` serving now, as registered (None: never registered: the base)."""
        return self.session.scalar(
            select(AdapterVersion).where(
                AdapterVersion.plugin == plugin, AdapterVersion.status == AdapterStatus.champion
            )
        )

    def find_adapter(self, version: str, plugin: str | None = None) -> AdapterVersion:
        self._authorize(Resource.adapter, Action.read, version)
        query = select(AdapterVersion).where(AdapterVersion.version == version)
        if plugin is not None:
            query = query.where(AdapterVersion.plugin == plugin)
        found = list(self.session.scalars(query))
        if not found:
            raise NotFound(f"no adapter version {version!r}")
        if len(found) > 1:
            raise InvalidInput(f"version {version!r} names adapters of several plugins; give the plugin")
        return found[0]

    def previous_champion(self, plugin: str) -> AdapterVersion | None:
        """What a rollback returns to: the retired version promoted most recently."""
        return self.session.scalar(
            select(AdapterVersion)
            .where(
                AdapterVersion.plugin == plugin,
                AdapterVersion.status == AdapterStatus.retired,
                AdapterVersion.promoted_at.is_not(None),
            )
            .order_by(AdapterVersion.promoted_at.desc(), AdapterVersion.id.desc())
            .limit(1)
        )

    def promote_adapter(
        self, adapter_id: int, reason: str, *, override_gate: bool = False, action: str = "promote"
    ) -> tuple[AdapterVersion, AdapterVersion | None]:
        """Make ``adapter_id`` its plugin's champion (the old one retires); audited with the reason. A
        version that failed the gate (or was never gated) needs ``override_gate`` and a reason."""
        adapter = self._get(AdapterVersion, adapter_id, "adapter version")
        reason = _text(reason, 2000, "reason").strip()
        if not reason:
            raise InvalidInput("reason: say why (it goes into the audit log)")
        if adapter.status is AdapterStatus.champion:
            raise Conflict(f"{adapter.plugin} {adapter.version} is the champion already")
        if adapter.gate_passed is not True and not override_gate:
            raise Conflict(
                f"{adapter.plugin} {adapter.version} did not pass the evaluation gate: promoting it needs "
                "override_gate=true and a reason"
            )
        previous = self.champion(adapter.plugin)
        self._authorize(Resource.adapter, Action.write, adapter.version)
        self._audit(Resource.adapter, Action.write, adapter.version, detail={
            "action": action, "plugin": adapter.plugin, "version": adapter.version, "reason": reason,
            "override_gate": override_gate, "gate_passed": adapter.gate_passed,
            "previous": previous.version if previous is not None else None})  # fmt: skip
        if previous is not None:
            previous.status = AdapterStatus.rolled_back if action == "rollback" else AdapterStatus.retired
        adapter.status, adapter.promoted_at = AdapterStatus.champion, utcnow()
        self.session.flush()
        return adapter, previous

    def create_job(
        self, plugin: str, config: dict[str, Any], *, champion_version: str | None = None
    ) -> FineTuneJob:
        self._authorize(Resource.job, Action.write, f"new:{plugin}")
        job = FineTuneJob(plugin=plugin, requested_by=self.actor.user_id, config=_payload(config, "config"),
                          status=JobStatus.queued, champion_version=champion_version)  # fmt: skip
        self.session.add(job)
        self.session.flush()
        self.session.add(FineTuneJobEvent(job_id=job.id, status=job.status, message="created"))
        self.session.flush()
        return job

    def get_job(self, job_id: int) -> FineTuneJob:
        job = self._get(FineTuneJob, job_id, "fine-tune job")
        self._authorize(Resource.job, Action.read, job_id)
        return job

    def list_jobs(self, plugin: str | None = None, limit: int = 100) -> list[FineTuneJob]:
        self._authorize(Resource.job, Action.read, plugin or "*")
        query = select(FineTuneJob).order_by(FineTuneJob.id.desc()).limit(limit)
        if plugin is not None:
            query = query.where(FineTuneJob.plugin == plugin)
        return list(self.session.scalars(query))

    def active_jobs(self, plugin: str | None = None) -> list[FineTuneJob]:
        """Jobs not finished yet (queued, running, evaluating), oldest first. Not audited: the runner's
        bookkeeping, no record is disclosed."""
        query = select(FineTuneJob).where(FineTuneJob.status.in_(ACTIVE_JOB_STATES)).order_by(FineTuneJob.id)
        if plugin is not None:
            query = query.where(FineTuneJob.plugin == plugin)
        return list(self.session.scalars(query))

    def advance_job(self, job_id: int, status: JobStatus, message: str = "", **fields: Any) -> FineTuneJob:
        """Move a job to ``status`` (only along the allowed transitions), with the columns in ``fields``
        (progress, dataset, gate, error, runner, result_adapter_id, champion_version)."""
        job = self._get(FineTuneJob, job_id, "fine-tune job")
        self._authorize(Resource.job, Action.write, job_id)
        allowed = _JOB_TRANSITIONS[job.status]
        if status not in allowed and status is not job.status:
            raise Conflict(f"a {job.status} job cannot become {status}")
        unknown = set(fields) - _JOB_FIELDS
        if unknown:
            raise InvalidInput(f"unknown job fields {sorted(unknown)}")
        for key, value in fields.items():
            setattr(job, key, value)
        if status is not job.status:
            self.session.add(
                FineTuneJobEvent(job_id=job_id, status=status, message=_text(message, 2000, "message"))
            )
        job.status, job.updated_at = status, utcnow()
        if status in TERMINAL_JOB_STATES:
            job.finished_at = job.updated_at
        self.session.flush()
        return job

    def touch_job(self, job_id: int, **fields: Any) -> None:
        """The runner's heartbeat and progress (no status change, not audited: bookkeeping, no access)."""
        unknown = set(fields) - {"progress", "runner"}
        if unknown:
            raise InvalidInput(f"unknown job fields {sorted(unknown)}")
        job = self._get(FineTuneJob, job_id, "fine-tune job")
        for key, value in fields.items():
            setattr(job, key, value)
        job.updated_at = utcnow()
        self.session.flush()

    def request_cancel(self, job_id: int) -> FineTuneJob:
        """Ask a job to stop; a queued one is cancelled at once, a running one at its next step."""
        job = self._get(FineTuneJob, job_id, "fine-tune job")
        self._authorize(Resource.job, Action.write, f"{job_id}:cancel")
        if job.status in TERMINAL_JOB_STATES:
            raise Conflict(f"job {job_id} is {job.status} already")
        job.cancel_requested = True
        if job.status is JobStatus.queued and job.runner is None:
            return self.advance_job(job_id, JobStatus.cancelled, "cancelled before it started")
        self.session.flush()
        return job

    # -- the PACS: where imported studies came from, searches (issue 17) ------------------------------
    def add_pacs_import(
        self, study_id: int, *, study_uid: str, series_uid: str, instances: list[list[str]]
    ) -> PacsImport:
        """Remember the ORIGINAL UIDs of an imported study (kept out of its metadata, which the model
        sees): a signed report goes back to that study. ``instances``: [SOP class, SOP instance] in the
        study's slice order."""
        study = self._get(Study, study_id, "study")
        self._authorize(Resource.study, Action.write, study_id, study.patient_id)
        row = PacsImport(study_id=study_id, study_uid=_text(study_uid, 64, "study_uid"),
                         series_uid=_text(series_uid, 64, "series_uid"), instances=instances,
                         imported_by=self.actor.user_id)  # fmt: skip
        self.session.add(row)
        self.session.flush()
        return row

    def pacs_import_of(self, study_id: int) -> PacsImport | None:
        """Where a study the caller may read came from in the PACS; None for an uploaded study."""
        self.get_study(study_id)
        return self.session.scalar(select(PacsImport).where(PacsImport.study_id == study_id))

    def audit_pacs_search(self, filters: dict[str, str], found: int) -> None:
        """A physician's search of the PACS (its answers are PHI of patients who may not be ours)."""
        if self.actor.role is not Role.physician:
            self._deny(Resource.study, Action.read, "pacs", None, "only physicians search the PACS")
        self._audit("pacs", Action.read, "search", detail={"filters": filters, "found": found})

    # -- care teams as the admin's pages show them; a study's parts within an audited view -------------
    def list_care_teams(self) -> list[CareTeamLink]:
        """Every physician–patient link, named by login (an admin manages logins, not health records)."""
        from sqlalchemy.orm import aliased

        self._authorize(Resource.care_team, Action.read, "care_teams")
        login = aliased(User)  # the patient's own user row, beside the physician's
        rows = self.session.execute(
            select(CareTeamMember.physician_id, User.name, CareTeamMember.patient_id, login.name)
            .join(User, User.id == CareTeamMember.physician_id)
            .join(Patient, Patient.id == CareTeamMember.patient_id)
            .outerjoin(login, login.id == Patient.user_id)
            .order_by(CareTeamMember.patient_id, User.name)
        )
        return [CareTeamLink(int(a), str(b), int(c), d) for a, b, c, d in rows]

    def remove_from_care_team(self, physician_id: int, patient_id: int) -> bool:
        """Take a physician off a patient's care team: their next request for that patient's records is
        refused. False when they were not on it (the attempt is audited all the same)."""
        link = f"{physician_id}:{patient_id}"
        decision = decide(self.actor.role, Resource.care_team, Action.write, Relation.not_patient_data)
        if not decision.allowed:
            self._deny(Resource.care_team, Action.write, link, patient_id, decision.reason)
        member = self.session.get(CareTeamMember, (physician_id, patient_id))
        self._audit(Resource.care_team, Action.write, link, patient_id,
                    detail={"change": "remove", "was_member": member is not None})  # fmt: skip
        if member is None:
            return False
        self.session.delete(member)
        self.session.flush()
        self.session.info.pop(_RELATIONS, None)
        return True

    def study_within_view(self, study_id: int) -> Study:
        """A study for one part of a view the caller opened and that was audited then (a slice picture
        of the viewer page): the access policy is checked again, and a refusal audited, but an allowed
        access adds no row of its own, so scrolling through a series does not flood the log."""
        study = self._get(Study, study_id, "study")
        relation = self._relation(study.patient_id)
        decision = decide(self.actor.role, Resource.study, Action.read, relation,
                          admin_phi_access=self.admin_phi_access)  # fmt: skip
        if not decision.allowed:
            self._deny(Resource.study, Action.read, study_id, study.patient_id, decision.reason)
        return study

    # -- images generated from a study (issue 17: secondary captures) ---------------------------------
    DERIVED_IMAGE = "derived_image"  # the audit rows' resource; the policy is that of reads

    def _derived_image(self, study_id: int, image_id: int, action: Action) -> DerivedImage:
        """A derived image of ``study_id`` under the policy of reads (AI output about a study): the care
        team generates, sees and reviews it; the patient sees it once a physician accepted it. Audited as
        ``derived_image.<action>``; a refusal answers like a missing image."""
        image = self._get(DerivedImage, image_id, "derived image")
        if image.study_id != study_id:
            raise NotFound(f"no derived image {image_id} of study {study_id}")
        patient_id = self.session.scalar(select(Study.patient_id).where(Study.id == study_id))
        if self.actor.role is Role.patient and image.status is not DerivedStatus.accepted:
            self._deny(self.DERIVED_IMAGE, action, image_id, patient_id, "not accepted by a physician",
                       NotFound(f"no derived image {image_id}"))  # fmt: skip
        self._authorize_derived(action, image_id, patient_id)
        return image

    def _authorize_derived(self, action: Action, image_id: object, patient_id: int | None) -> None:
        decision = decide(self.actor.role, Resource.read, action, self._relation(patient_id),
                          admin_phi_access=self.admin_phi_access)  # fmt: skip
        if not decision.allowed:
            self._deny(self.DERIVED_IMAGE, action, image_id, patient_id, decision.reason,
                       NotFound(f"no derived image {image_id}"))  # fmt: skip
        self._audit(self.DERIVED_IMAGE, action, image_id, patient_id)

    def add_derived_image(
        self, study_id: int, *, task: str, source_slice: int, pixel_key: str, provenance: dict[str, Any]
    ) -> DerivedImage:
        """A generated image of a study, PRELIMINARY until a physician reviews it (physicians of the
        patient's care team only: the policy lets no one else write AI output about a study)."""
        study = self._get(Study, study_id, "study")
        self._authorize_derived(Action.write, f"study:{study_id}", study.patient_id)
        image = DerivedImage(study_id=study_id, task=_text(task, 24, "task"), source_slice=source_slice,
                             pixel_key=_text(pixel_key, 64, "pixel_key"),
                             provenance=_payload(provenance, "provenance"),
                             status=DerivedStatus.preliminary, created_by=self.actor.user_id)  # fmt: skip
        self.session.add(image)
        self.session.flush()
        return image

    def get_derived_image(self, study_id: int, image_id: int) -> DerivedImage:
        return self._derived_image(study_id, image_id, Action.read)

    def review_derived_image(
        self, study_id: int, image_id: int, accept: bool, reason: str = ""
    ) -> DerivedImage:
        """A physician's verdict on a preliminary image: accepted or rejected, once."""
        image = self._derived_image(study_id, image_id, Action.sign)
        if image.status is not DerivedStatus.preliminary:
            raise Conflict(f"derived image {image_id} was {image.status} already")
        image.status = DerivedStatus.accepted if accept else DerivedStatus.rejected
        image.reviewed_by, image.reviewed_at = self.actor.user_id, utcnow()
        image.review_reason = _text(reason, 2000, "reason")
        self.session.flush()
        return image


@dataclass(frozen=True)
class CareTeamLink:
    """One physician on one patient's care team, as an admin sees it (logins and ids, no health data)."""

    physician_id: int
    physician: str
    patient_id: int
    patient_login: str | None  # None: a patient record without a login


class Conflict(InvalidInput):
    """The record is not in a state that allows this (the API answers 409)."""


ACTIVE_JOB_STATES = (JobStatus.validating, JobStatus.queued, JobStatus.running, JobStatus.evaluating)
TERMINAL_JOB_STATES = frozenset(
    {JobStatus.succeeded, JobStatus.rejected, JobStatus.failed, JobStatus.cancelled}
)
_JOB_FIELDS = {"progress", "dataset", "gate", "error", "runner", "result_adapter_id", "champion_version"}
_JOB_TRANSITIONS = {
    JobStatus.validating: {JobStatus.queued, JobStatus.failed, JobStatus.cancelled},
    JobStatus.queued: {JobStatus.running, JobStatus.failed, JobStatus.cancelled},
    # running -> queued: a job resumed after its runner went away (see serving.finetune)
    JobStatus.running: {JobStatus.evaluating, JobStatus.queued, JobStatus.failed, JobStatus.cancelled},
    JobStatus.evaluating: {
        JobStatus.succeeded,
        JobStatus.rejected,
        JobStatus.queued,
        JobStatus.failed,
        JobStatus.cancelled,
    },
    JobStatus.succeeded: set(),
    JobStatus.rejected: set(),
    JobStatus.failed: set(),
    JobStatus.cancelled: set(),
}


def _as_utc(moment: datetime) -> datetime:
    # SQLite hands datetimes back naive (they were stored as UTC); PostgreSQL hands them back aware.
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def _text(value: str, limit: int, field: str) -> str:
    if not isinstance(value, str):
        raise InvalidInput(f"{field} must be text")
    if len(value) > limit:
        raise InvalidInput(f"{field} is longer than {limit} characters")
    return value


def _payload(value: dict[str, Any], field: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise InvalidInput(f"{field} must be an object")
    try:
        size = len(json.dumps(value).encode("utf-8"))
    except (TypeError, ValueError) as exc:
        raise InvalidInput(f"{field} is not JSON-serialisable: {exc}") from exc
    if size > MAX_PAYLOAD_BYTES:
        raise InvalidInput(f"{field} is {size} bytes; the limit is {MAX_PAYLOAD_BYTES}")
    return value
