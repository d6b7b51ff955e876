"""SQLAlchemy models. Every change here ships with an Alembic migration in ``memory/migrations``."""

from __future__ import annotations

import enum
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    CheckConstraint,
    DateTime,
    Enum,
    ForeignKey,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


def utcnow() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    pass


class Role(enum.StrEnum):
    patient = "patient"
    physician = "physician"
    admin = "admin"


class AuthorRole(enum.StrEnum):
    """Who wrote a message: a person in one of the roles, or the assistant (model text)."""

    patient = "patient"
    physician = "physician"
    admin = "admin"
    assistant = "assistant"


class User(Base):
    __tablename__ = "users"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    role: Mapped[Role] = mapped_column(Enum(Role, name="role", native_enum=False, length=16))
    disabled: Mapped[bool] = mapped_column(default=False)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    tokens: Mapped[list[ApiToken]] = relationship(back_populates="user", cascade="all, delete-orphan")


def _enum(cls: type[enum.StrEnum], name: str) -> Enum:
    # Portable: a VARCHAR with a CHECK, the same on PostgreSQL and SQLite; new values need no ALTER TYPE.
    return Enum(cls, name=name, native_enum=False, length=24, values_callable=lambda e: [m.value for m in e])


class TokenKind(enum.StrEnum):
    api = "api"  # a bearer token handed to a person or a script
    session = "session"  # a browser sign-in: held in a cookie, always with an expiry


class ApiToken(Base):
    """A bearer token, stored only as its SHA-256 (tokens are 256-bit random, so no slow hash needed).
    A token stops working when revoked, when it expires, or when its user is disabled; each request checks
    all three, so a change takes effect at the next request."""

    __tablename__ = "api_tokens"

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    token_sha256: Mapped[str] = mapped_column(String(64), unique=True)
    label: Mapped[str] = mapped_column(String(100), default="")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), default=None)
    expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), default=None)
    kind: Mapped[TokenKind] = mapped_column(_enum(TokenKind, "token_kind"), default=TokenKind.api)

    user: Mapped[User] = relationship(back_populates="tokens")


class Patient(Base):
    """A person whose data the system holds. ``user_id`` links the patient's own login, if any."""

    __tablename__ = "patients"

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"), unique=True)
    display_name: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class CareTeamMember(Base):
    """A physician allowed to see a patient's records."""

    __tablename__ = "care_team"

    physician_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), primary_key=True)
    patient_id: Mapped[int] = mapped_column(ForeignKey("patients.id", ondelete="CASCADE"), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class ConsultationStatus(enum.StrEnum):
    open = "open"
    closed = "closed"


class Consultation(Base):
    """One conversation; its id is the LangGraph thread id."""

    __tablename__ = "consultations"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    # NULL for staff conversations that concern no patient (no PHI).
    patient_id: Mapped[int | None] = mapped_column(ForeignKey("patients.id", ondelete="CASCADE"), index=True)
    opened_by: Mapped[int] = mapped_column(ForeignKey("users.id"))
    status: Mapped[ConsultationStatus] = mapped_column(
        _enum(ConsultationStatus, "consultation_status"), default=ConsultationStatus.open
    )
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    closed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), default=None)
    # Set when the safety screen escalated this consultation (red flag): what, and when.
    flag: Mapped[str | None] = mapped_column(String(200), default=None)
    flagged_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), default=None)


class Notification(Base):
    """A message to one user (e.g. a physician told of a red flag in a patient's consultation)."""

    __tablename__ = "notifications"

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    consultation_id: Mapped[str | None] = mapped_column(
        ForeignKey("consultations.id", ondelete="CASCADE"), default=None
    )
    kind: Mapped[str] = mapped_column(String(32))
    text: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Message(Base):
    __tablename__ = "messages"

    id: Mapped[int] = mapped_column(primary_key=True)
    consultation_id: Mapped[str] = mapped_column(
        ForeignKey("consultations.id", ondelete="CASCADE"), index=True
    )
    author_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    author_role: Mapped[str] = mapped_column(String(16))  # an AuthorRole (a plain column: no migration)
    content: Mapped[str] = mapped_column(Text)
    attachments: Mapped[list[str]] = mapped_column(JSON, default=list)  # pixel-store keys
    provenance: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class StudySource(enum.StrEnum):
    upload = "upload"
    pacs = "pacs"


class Study(Base):
    """An imaging study, de-identified; the pixels live in the content-addressed pixel store."""

    __tablename__ = "studies"

    id: Mapped[int] = mapped_column(primary_key=True)
    patient_id: Mapped[int] = mapped_column(ForeignKey("patients.id", ondelete="CASCADE"), index=True)
    modality: Mapped[str] = mapped_column(String(16), default="")
    description: Mapped[str] = mapped_column(String(400), default="")
    deidentified_metadata: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    pixel_key: Mapped[str | None] = mapped_column(String(64), default=None)
    source: Mapped[StudySource] = mapped_column(
        _enum(StudySource, "study_source"), default=StudySource.upload
    )
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class ReadStatus(enum.StrEnum):
    preliminary = "preliminary"
    final = "final"
    amended = "amended"


class Read(Base):
    """A read of a study: the AI draft stays preliminary until a physician signs it."""

    __tablename__ = "reads"

    id: Mapped[int] = mapped_column(primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id", ondelete="CASCADE"), index=True)
    ai_draft: Mapped[str] = mapped_column(Text)
    provenance: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    physician_final: Mapped[str | None] = mapped_column(Text, default=None)
    status: Mapped[ReadStatus] = mapped_column(
        _enum(ReadStatus, "read_status"), default=ReadStatus.preliminary
    )
    signed_by: Mapped[int | None] = mapped_column(ForeignKey("users.id"), default=None)
    signed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), default=None)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class FeedbackKind(enum.StrEnum):
    rating = "rating"
    correction = "correction"
    preference = "preference"


class Feedback(Base):
    """Feedback on one model output, with the model + plugin + adapter version that produced it."""

    __tablename__ = "feedback"
    __table_args__ = (
        CheckConstraint(
            "(target_message_id IS NULL) <> (target_read_id IS NULL)", name="feedback_exactly_one_target"
        ),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    target_message_id: Mapped[int | None] = mapped_column(ForeignKey("messages.id", ondelete="CASCADE"))
    target_read_id: Mapped[int | None] = mapped_column(ForeignKey("reads.id", ondelete="CASCADE"))
    patient_id: Mapped[int] = mapped_column(ForeignKey("patients.id", ondelete="CASCADE"), index=True)
    author_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    kind: Mapped[FeedbackKind] = mapped_column(_enum(FeedbackKind, "feedback_kind"))
    payload: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    model: Mapped[str] = mapped_column(String(200))
    plugin: Mapped[str] = mapped_column(String(100))
    adapter_version: Mapped[str] = mapped_column(String(100))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class AdapterStatus(enum.StrEnum):
    candidate = "candidate"
    champion = "champion"
    retired = "retired"
    rolled_back = "rolled_back"
    rejected = "rejected"  # failed the evaluation gate: never served unless an admin overrides, audited


class AdapterVersion(Base):
    __tablename__ = "adapter_versions"
    __table_args__ = (UniqueConstraint("plugin", "version", name="adapter_plugin_version"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    plugin: Mapped[str] = mapped_column(String(100))
    version: Mapped[str] = mapped_column(String(100))
    files: Mapped[list[str]] = mapped_column(JSON, default=list)
    parent_id: Mapped[int | None] = mapped_column(ForeignKey("adapter_versions.id"), default=None)
    metrics: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    status: Mapped[AdapterStatus] = mapped_column(
        _enum(AdapterStatus, "adapter_status"), default=AdapterStatus.candidate
    )
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    # The content-addressed folder (data_dir/adapters/<plugin>/<sha256>) and the sha256 of its weights,
    # checked before every load; both NULL for the base model's own plugin (its spec names the files).
    path: Mapped[str | None] = mapped_column(String(1000), default=None)
    sha256: Mapped[str | None] = mapped_column(String(64), default=None)
    gate_passed: Mapped[bool | None] = mapped_column(default=None)
    # Set each time the version becomes champion: rollback returns to the latest earlier one.
    promoted_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), default=None)


class JobStatus(enum.StrEnum):
    """queued → running → evaluating → succeeded (gate passed: a candidate) | rejected (gate failed) |
    failed | cancelled. ``validating`` is kept for rows written before revision 0004."""

    validating = "validating"
    queued = "queued"
    running = "running"
    evaluating = "evaluating"
    succeeded = "succeeded"
    rejected = "rejected"
    failed = "failed"
    cancelled = "cancelled"


class FineTuneJob(Base):
    __tablename__ = "finetune_jobs"

    id: Mapped[int] = mapped_column(primary_key=True)
    plugin: Mapped[str] = mapped_column(String(100))
    requested_by: Mapped[int] = mapped_column(ForeignKey("users.id"))
    status: Mapped[JobStatus] = mapped_column(_enum(JobStatus, "job_status"), default=JobStatus.validating)
    config: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    result_adapter_id: Mapped[int | None] = mapped_column(ForeignKey("adapter_versions.id"), default=None)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    champion_version: Mapped[str | None] = mapped_column(String(100), default=None)
    progress: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)  # the latest step
    dataset: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)  # snapshot digest, counts
    gate: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)  # the GateReport
    error: Mapped[str | None] = mapped_column(Text, default=None)  # why it failed
    cancel_requested: Mapped[bool] = mapped_column(default=False)
    runner: Mapped[str | None] = mapped_column(String(200), default=None)  # which process runs it
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), default=None)


class FineTuneJobEvent(Base):
    __tablename__ = "finetune_job_events"

    id: Mapped[int] = mapped_column(primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("finetune_jobs.id", ondelete="CASCADE"), index=True)
    status: Mapped[JobStatus] = mapped_column(_enum(JobStatus, "job_status"))
    message: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class AuditEntry(Base):
    """Append-only and hash-chained: ``row_hash = sha256(prev_hash + canonical row)``."""

    __tablename__ = "audit_log"

    id: Mapped[int] = mapped_column(primary_key=True)
    seq: Mapped[int] = mapped_column(Integer, unique=True)  # chain position, gap-free
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    actor_id: Mapped[int | None] = mapped_column(Integer, default=None)  # no FK: the log outlives users
    actor_role: Mapped[str] = mapped_column(String(16))
    action: Mapped[str] = mapped_column(String(64))
    resource: Mapped[str] = mapped_column(String(32))
    resource_id: Mapped[str] = mapped_column(String(64), default="")
    patient_id: Mapped[int | None] = mapped_column(Integer, default=None)
    outcome: Mapped[str] = mapped_column(String(8))  # allowed | denied
    detail: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    prev_hash: Mapped[str] = mapped_column(String(64))
    row_hash: Mapped[str] = mapped_column(String(64))


class AuditHead(Base):
    """One row: the chain's tip. Updating it first serialises appends on PostgreSQL and SQLite alike."""

    __tablename__ = "audit_head"

    id: Mapped[int] = mapped_column(primary_key=True)
    seq: Mapped[int] = mapped_column(Integer, default=0)
    row_hash: Mapped[str] = mapped_column(String(64))


class PacsImport(Base):
    """Where an imported study came from: the ORIGINAL PACS UIDs of a de-identified study. Kept apart from
    the study's metadata because that metadata reaches the model and these UIDs must not; they are what a
    signed report needs to land back in the original study."""

    __tablename__ = "pacs_imports"

    id: Mapped[int] = mapped_column(primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id", ondelete="CASCADE"), unique=True)
    study_uid: Mapped[str] = mapped_column(String(64), index=True)
    series_uid: Mapped[str] = mapped_column(String(64))
    # [[SOP Class UID, SOP Instance UID], …] in the study's slice order (as the intake sorted them).
    instances: Mapped[list[list[str]]] = mapped_column(JSON, default=list)
    imported_by: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class PushStatus(enum.StrEnum):
    pending = "pending"
    delivered = "delivered"


class PushKind(enum.StrEnum):
    """What a push stores in the PACS: a signed read as a DICOM SR, or an accepted generated image as a
    Secondary Capture. One outbox for both, so both get the same retries, leases and status."""

    sr = "sr"
    sc = "sc"


class ReportPush(Base):
    """The outbox: one signed version of a read, to be stored in the PACS as a DICOM SR. Written in the
    sign-off's wake and retried until the PACS has it, so a signed report is never lost to an outage."""

    __tablename__ = "report_pushes"
    __table_args__ = (
        UniqueConstraint("read_id", "signature", name="report_push_once_per_signature"),
        UniqueConstraint("image_id", name="report_push_once_per_image"),
        # A push is about one read (an SR) or one derived image (a secondary capture), never both.
        CheckConstraint("(read_id IS NULL) <> (image_id IS NULL)", name="report_push_one_subject"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    kind: Mapped[PushKind] = mapped_column(
        _enum(PushKind, "push_kind"), default=PushKind.sr, server_default=PushKind.sr.value
    )
    read_id: Mapped[int | None] = mapped_column(ForeignKey("reads.id", ondelete="CASCADE"), index=True)
    image_id: Mapped[int | None] = mapped_column(
        ForeignKey("derived_images.id", ondelete="CASCADE"), default=None
    )
    signature: Mapped[str] = mapped_column(String(40))  # the signed_at it snapshots (ISO, UTC)
    report_status: Mapped[str] = mapped_column(String(16))  # final | amended
    # The stored instance's UIDs (the SR's, or the secondary capture's for kind "sc"), fixed at enqueue:
    # a retried push is idempotent.
    sr_uid: Mapped[str] = mapped_column(String(64))
    sr_series_uid: Mapped[str] = mapped_column(String(64))
    replaces_uid: Mapped[str | None] = mapped_column(String(64), default=None)  # the SR it amends
    payload: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    status: Mapped[PushStatus] = mapped_column(
        _enum(PushStatus, "push_status"), default=PushStatus.pending, index=True
    )
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    claimed_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), default=None)
    last_error: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    delivered_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), default=None)


class DerivedStatus(enum.StrEnum):
    """A generated image is AI output: preliminary until a physician accepts or rejects it."""

    preliminary = "preliminary"
    accepted = "accepted"
    rejected = "rejected"


class DerivedImage(Base):
    """An image the model generated from one slice of a study (reconstruction, super-resolution, CT↔MRI):
    its PNG in the pixel store, what made it, and the physician's review. An accepted image of a study
    imported from the PACS goes back to the original study as a Secondary Capture (``report_pushes``)."""

    __tablename__ = "derived_images"

    id: Mapped[int] = mapped_column(primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id", ondelete="CASCADE"), index=True)
    task: Mapped[str] = mapped_column(String(24))  # tools.healthgpt.ImageTask
    source_slice: Mapped[int] = mapped_column(Integer)  # 1-based, in the study's slice order
    pixel_key: Mapped[str] = mapped_column(String(64))  # the generated PNG
    provenance: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)  # model, plugin, adapter, …
    status: Mapped[DerivedStatus] = mapped_column(
        _enum(DerivedStatus, "derived_status"), default=DerivedStatus.preliminary
    )
    created_by: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    reviewed_by: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"), default=None)
    review_reason: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    reviewed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), default=None)
