"""Request and response bodies of the HTTP API; response models read the records' rows directly."""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from fastapi import Path
from pydantic import (
    AfterValidator,
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    PlainSerializer,
    Strict,
    WithJsonSchema,
    computed_field,
    field_validator,
    model_validator,
)

from agents import DEMO_WEIGHTS_NOTICE
from memory.schema import AdapterStatus, ConsultationStatus, DerivedStatus, JobStatus, ReadStatus
from tools.healthgpt import ImageTask, ModelHealth, Provenance

THREAD_ID_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"
# Record ids are INTEGER columns: 32 bits in PostgreSQL, 64 in SQLite. A larger number would overflow in
# the database driver (a 500), so it is refused here (a 422) like any other invalid id.
MAX_RECORD_ID = 2**31 - 1
INT64_MAX = 2**63 - 1  # integers inside free-form JSON payloads
MAX_PAYLOAD_DEPTH = 8


def _storable_text(value: str) -> str:
    # PostgreSQL refuses NUL in text and JSON; a lone surrogate cannot be encoded for either database.
    if "\x00" in value:
        raise ValueError("must not contain NUL characters")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("must be valid Unicode text") from None
    return value


Text = Annotated[str, AfterValidator(_storable_text)]
# Form fields arrive as text ("42"), so ids read from forms parse numbers from text; JSON bodies are
# validated strictly (see bodies.read_body and the Strict ids below): true, 1.0 and "1" are not ids.
RecordId = Annotated[int, Field(ge=1, le=MAX_RECORD_ID)]
StrictRecordId = Annotated[int, Strict(), Field(ge=1, le=MAX_RECORD_ID)]
PathId = Annotated[int, Path(ge=1, le=MAX_RECORD_ID)]


def _check_json(value: Any, depth: int = 0) -> None:
    """Free-form JSON the records keep: finite numbers, 64-bit integers, storable text, bounded depth."""
    if depth > MAX_PAYLOAD_DEPTH:
        raise ValueError(f"nested deeper than {MAX_PAYLOAD_DEPTH} levels")
    if isinstance(value, bool) or value is None:
        return
    if isinstance(value, int):
        if not -INT64_MAX - 1 <= value <= INT64_MAX:
            raise ValueError("integers must fit in 64 bits")
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError("numbers must be finite")
    elif isinstance(value, str):
        _storable_text(value)
    elif isinstance(value, dict):
        for key, item in value.items():
            _storable_text(key)
            _check_json(item, depth + 1)
    elif isinstance(value, list):
        for item in value:
            _check_json(item, depth + 1)


def _utc_text(moment: datetime) -> str:
    # SQLite hands the stored UTC times back naive; without an offset the text is no RFC 3339
    # date-time (as documented), and a client would read it as local time.
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.isoformat()


# Written with `datetime.isoformat` ("+00:00"; pydantic would write "Z"), as the API always answered.
Timestamp = Annotated[
    datetime,
    PlainSerializer(_utc_text, return_type=str),
    WithJsonSchema({"type": "string", "format": "date-time"}),
]


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid")


class _FromRow(BaseModel):
    model_config = ConfigDict(from_attributes=True)


# -- requests ---------------------------------------------------------------------------------------
class ChatRequest(_Request):
    message: Text = Field(min_length=1, description="What the user says.")
    thread_id: str | None = Field(
        default=None, pattern=THREAD_ID_PATTERN, description="Continue this consultation; omit to start one."
    )


class MessageRequest(_Request):
    message: Text = Field(min_length=1, description="What the user says.")
    request: Literal["message", "image_task"] = Field(
        default="message", description="image_task: run the generation plugin on the attached image."
    )
    image_task: ImageTask | None = Field(default=None, description="Which image task (physicians).")
    study_id: RecordId | None = Field(
        default=None, description="Ask about this study (its image goes along)."
    )


class ConsultationCreate(_Request):
    patient_id: StrictRecordId | None = Field(
        default=None, description="Physicians: the patient; patients: omit."
    )


class StudyForm(BaseModel):
    patient_id: RecordId | None = Field(default=None, description="Physicians: the patient; patients: omit.")


class SignoffRequest(_Request):
    action: Literal["sign", "correct"]
    text: Text | None = Field(default=None, description="The corrected read (action=correct).")


class FeedbackRequest(_Request):
    message_id: StrictRecordId | None = Field(
        default=None, description="An answer (TurnResponse.message_id)."
    )
    read_id: StrictRecordId | None = Field(default=None, description="Or an AI read.")
    kind: Literal["rating", "correction", "preference"]
    payload: dict[str, Any] = Field(
        default_factory=dict,
        description="e.g. {'stars': 4} (an integer from 1 to 5) or {'text': ...}; finite numbers only.",
    )

    @field_validator("payload")
    @classmethod
    def _json_payload(cls, payload: dict[str, Any]) -> dict[str, Any]:
        _check_json(payload)
        return payload

    @model_validator(mode="after")
    def _rating(self) -> FeedbackRequest:
        stars = self.payload.get("stars")
        if self.kind == "rating" and stars is not None and not (type(stars) is int and 1 <= stars <= 5):
            raise ValueError("payload.stars must be an integer from 1 to 5")
        return self


# -- responses --------------------------------------------------------------------------------------
class HealthOut(BaseModel):
    status: Literal["ok"]


class ReadyOut(BaseModel):
    status: Literal["ready"]
    checks: dict[str, str] = Field(
        description="Each dependency's state: 'ok' or 'not configured (embedded)'."
    )


class TurnResponse(BaseModel):
    consultation_id: str
    message_id: int | None = Field(description="The stored answer; send feedback about it to /v1/feedback.")
    status: Literal["answered", "awaiting_signoff"]
    answer: str
    disclaimer: str
    route: str | None
    escalated: bool
    triage: dict[str, Any] | None
    read_id: int | None = None
    provenance: Provenance | None = Field(
        description="The model behind the answer; null for rule-based answers."
    )
    tool_results: dict[str, Any] = Field(default_factory=dict)
    injection: list[str] = Field(
        default_factory=list, description="Steering attempts found in the message (recorded, no effect)."
    )


class ChatResponse(TurnResponse):
    thread_id: str


class MessageOut(_FromRow):
    id: int
    author_role: str
    content: str
    attachments: list[str]
    provenance: dict[str, Any] | None
    created_at: Timestamp


class ConsultationOut(_FromRow):
    id: str
    patient_id: int | None
    status: ConsultationStatus
    flag: str | None = None
    messages: list[MessageOut] = Field(default_factory=list)


class ConsultationSummary(_FromRow):
    """One consultation in a list (``GET /v1/consultations``): no messages; open one for those."""

    id: str
    patient_id: int | None
    status: ConsultationStatus
    flag: str | None = Field(default=None, description="Why the safety screen escalated it, if it did.")
    created_at: Timestamp
    closed_at: Timestamp | None = None


class StudyOut(_FromRow):
    id: int
    patient_id: int
    modality: str
    description: str
    # The row's column is `deidentified_metadata` (SQLAlchemy reserves `metadata`).
    metadata: dict[str, Any] = Field(validation_alias=AliasChoices("deidentified_metadata", "metadata"))


class ReadOut(_FromRow):
    id: int
    study_id: int
    status: ReadStatus
    ai_draft: str | None = Field(description="The model's draft as written; null for patients.")
    physician_final: str | None
    provenance: dict[str, Any]

    @computed_field  # type: ignore[prop-decorator]
    @property
    def consultation_id(self) -> str | None:
        """The consultation whose review step waits for this read's sign-off."""
        return (self.provenance or {}).get("consultation_id")

    @computed_field  # type: ignore[prop-decorator]
    @property
    def notice(self) -> str | None:
        """Said of every draft the demo weights wrote (``ai_draft`` itself stays as the model wrote it:
        corrections are paired with it for training)."""
        shown = self.ai_draft is not None
        return DEMO_WEIGHTS_NOTICE if shown and (self.provenance or {}).get("demo_weights") else None


class FeedbackResponse(_FromRow):
    id: int
    adapter_version: str


class NotificationOut(_FromRow):
    id: int
    kind: str
    text: str
    consultation_id: str | None
    created_at: Timestamp


class FeedbackCount(_FromRow):
    plugin: str
    adapter_version: str
    kind: str
    count: int


class AdapterOut(_FromRow):
    id: int
    plugin: str
    version: str
    status: AdapterStatus
    metrics: dict[str, Any]


class AdaptersOut(BaseModel):
    registered: list[AdapterOut]
    serving: ModelHealth = Field(description="What the model deployment serves now.")


# -- fine-tune jobs, promotion, rollback (admins) ---------------------------------------------------
PluginName = Annotated[str, Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9_.-]+$")]
Reason = Annotated[Text, Field(min_length=1, max_length=2000, description="Why: kept in the audit log.")]


DatasetId = Annotated[str, Field(min_length=1, max_length=120, pattern=r"^[A-Za-z0-9_-][A-Za-z0-9_.-]*$")]


class DatasetOut(BaseModel):
    """A registered curated dataset: {question, answer, image?} rows for fine-tune jobs of one plugin."""

    id: str = Field(description="Name it in POST /v1/admin/finetunes {'datasets': [id]}.")
    name: str
    plugin: str
    file: str = Field(description="The uploaded file's name.")
    file_sha256: str
    rows: int
    counts: dict[str, dict[str, int]] = Field(description="Rows per split (train, heldout) and kind.")
    images: int
    digest: str = Field(description="sha256 over the dataset's files and images.")
    registered_by: str
    registered_at: Timestamp


class DatasetForm(BaseModel):
    plugin: PluginName = Field(description="The plugin the rows are for.")
    name: str | None = Field(default=None, min_length=1, max_length=200, description="Default: file's name.")


class FineTuneCreate(_Request):
    plugin: PluginName = Field(description="The plugin to refresh, e.g. 'comprehension'.")
    method: Literal["sft", "dpo", "kto", "all"] = Field(
        default="all",
        description="sft: corrections only; dpo: + correction-vs-draft pairs; kto: + thumbs; all: all kinds.",
    )
    since: datetime | None = Field(
        default=None, description="Only feedback given at or after this moment (besides: since the champion)."
    )
    min_examples: int | None = Field(default=None, ge=1, le=1_000_000, description="Training rows needed.")
    epochs: int | None = Field(default=None, ge=1, le=1000, description="Default: settings, else the preset.")
    datasets: list[DatasetId] = Field(
        default_factory=list,
        max_length=32,
        description="Registered curated datasets (GET /v1/admin/datasets) whose rows are trained on as well.",
    )
    feedback: bool = Field(
        default=True, description="Train on the feedback since the champion; false: the datasets alone."
    )


class FineTuneAccepted(_FromRow):
    id: int
    status: JobStatus


class GateCheckOut(BaseModel):
    name: str
    passed: bool
    items: int
    champion: float | None
    challenger: float | None
    delta: float | None
    rule: str
    reason: str = ""
    figures: dict[str, float | int] = Field(default_factory=dict)


class GateOut(BaseModel):
    passed: bool
    checks: list[GateCheckOut]
    champion_version: str | None = None
    challenger_version: str | None = None
    seconds: float | None = None


class FineTuneOut(BaseModel):
    id: int
    plugin: str
    status: JobStatus
    config: dict[str, Any]
    champion_version: str | None
    candidate_version: str | None = Field(description="The trained adapter (candidate or rejected).")
    progress: dict[str, Any] | None = Field(
        description="The latest step: step, total_steps, loss, tokens_per_second, eta_seconds."
    )
    dataset: dict[str, Any] | None
    gate: GateOut | None = Field(description="The evaluation gate's report, once it ran.")
    error: str | None
    cancel_requested: bool
    created_at: Timestamp
    updated_at: Timestamp
    finished_at: Timestamp | None


class JobEventOut(BaseModel):
    id: str
    kind: str = Field(description="queued, running, progress, evaluating, resumed, or the final status.")
    data: dict[str, Any]
    at: float


class PromoteRequest(_Request):
    reason: Reason
    override_gate: bool = Field(default=False, description="Promote a version that failed the gate.")


class RollbackRequest(_Request):
    reason: Reason


class PromotionOut(BaseModel):
    plugin: str
    version: str = Field(description="The champion now, served by every replica.")
    previous: str | None = Field(description="The champion before.")
    status: AdapterStatus


class FieldError(BaseModel):
    field: str
    message: str


class ProblemOut(BaseModel):
    """An error (RFC 9457 problem+json)."""

    type: str = "about:blank"
    title: str
    status: int
    detail: str = Field(description="What went wrong, for a person.")
    errors: list[FieldError] | None = Field(default=None, description="Invalid fields, one entry each.")
    request_id: str | None = Field(
        default=None, description="Quote it when reporting a problem: the logs and audit rows carry it."
    )


# Documented on every /v1 route: the problem+json answers a caller can get (the OpenAPI document gives
# each one the ProblemOut schema under application/problem+json; see bodies.document_bodies).
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: {"description": "malformed body"},
    401: {"description": "missing or invalid token"},
    403: {"description": "your role may not do this"},
    404: {"description": "no such record (or not one you may see)"},
    409: {"description": "the consultation or read is not in a state that allows this"},
    413: {"description": "body or file too large"},
    415: {"description": "unsupported content type or file"},
    422: {"description": "invalid fields"},
    429: {"description": "rate limit exceeded, or too many invalid tokens; see Retry-After"},
    502: {"description": "the model failed to answer"},
    503: {"description": "the model is busy or restarting; see Retry-After"},
    504: {"description": "the model did not answer in time"},
}


# -- images generated from a study (issue 17) -------------------------------------------------------------
# The tasks that take a source image: text_to_image makes a picture of no study, so it has no place here.
SourceImageTask = Literal["reconstruction", "super_resolution", "ct_to_mri", "mri_to_ct"]


class DerivedImageRequest(_Request):
    task: SourceImageTask
    slice: Annotated[int, Strict(), Field(ge=1, le=MAX_RECORD_ID)] | None = Field(
        default=None, description="1-based slice of the study; default: its key (middle) slice."
    )


class DerivedImageReview(_Request):
    action: Literal["accept", "reject"]
    reason: Annotated[Text, Field(max_length=2000)] | None = None


class PacsCaptureOut(BaseModel):
    """An accepted image's way back to the PACS, as a Secondary Capture in the original study."""

    status: Literal["pending", "delivered", "not_from_pacs"] = Field(
        description="pending: queued, retried until delivered; not_from_pacs: an upload, nothing to push"
    )
    attempts: int = 0
    sop_instance_uid: str | None = Field(default=None, description="The capture's UID, the same every try.")
    last_error: str = ""


class DerivedImageOut(_FromRow):
    id: int
    study_id: int
    task: SourceImageTask
    source_slice: int
    status: DerivedStatus = Field(
        description="AI output: preliminary until a physician of the care team accepts or rejects it"
    )
    provenance: dict[str, Any]
    created_by: int | None
    created_at: Timestamp
    reviewed_by: int | None
    reviewed_at: Timestamp | None
    review_reason: str
    url: str = Field(default="", description="GET it for the PNG (Accept: application/json: this record)")
    pacs: PacsCaptureOut | None = Field(
        default=None, description="Accepted images only: the secondary capture in the PACS."
    )
