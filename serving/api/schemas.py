"""Request and response bodies of the HTTP API; response models read the records' rows directly."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import (
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    PlainSerializer,
    WithJsonSchema,
    computed_field,
)

from memory.schema import AdapterStatus, ConsultationStatus, ReadStatus
from tools.healthgpt import ImageTask, ModelHealth, Provenance

THREAD_ID_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"

# Written as the row holds it (`datetime.isoformat`): pydantic would turn "+00:00" into "Z", and the
# API has always answered with the isoformat text.
Timestamp = Annotated[
    datetime,
    PlainSerializer(datetime.isoformat, return_type=str),
    WithJsonSchema({"type": "string", "format": "date-time"}),
]


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid")


class _FromRow(BaseModel):
    model_config = ConfigDict(from_attributes=True)


# -- requests ---------------------------------------------------------------------------------------
class ChatRequest(_Request):
    message: str = Field(min_length=1, description="What the user says.")
    thread_id: str | None = Field(
        default=None, pattern=THREAD_ID_PATTERN, description="Continue this consultation; omit to start one."
    )


class MessageRequest(_Request):
    message: str = Field(min_length=1, description="What the user says.")
    request: Literal["message", "image_task"] = Field(
        default="message", description="image_task: run the generation plugin on the attached image."
    )
    image_task: ImageTask | None = Field(default=None, description="Which image task (physicians).")
    study_id: int | None = Field(default=None, description="Ask about this study (its image goes along).")


class ConsultationCreate(_Request):
    patient_id: int | None = Field(default=None, description="Physicians: the patient; patients: omit.")


class StudyForm(BaseModel):
    patient_id: int | None = Field(default=None, description="Physicians: the patient; patients: omit.")


class SignoffRequest(_Request):
    action: Literal["sign", "correct"]
    text: str | None = Field(default=None, description="The corrected read (action=correct).")


class FeedbackRequest(_Request):
    message_id: int | None = Field(default=None, description="An answer (TurnResponse.message_id).")
    read_id: int | None = Field(default=None, description="Or an AI read.")
    kind: Literal["rating", "correction", "preference"]
    payload: dict[str, Any] = Field(default_factory=dict, description="e.g. {'stars': 4} or {'text': ...}")


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
    ai_draft: str
    physician_final: str | None
    provenance: dict[str, Any]

    @computed_field  # type: ignore[prop-decorator]
    @property
    def consultation_id(self) -> str | None:
        """The consultation whose review step waits for this read's sign-off."""
        return (self.provenance or {}).get("consultation_id")


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


# Documented on every /v1 route: the problem+json answers a caller can get.
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    401: {"description": "missing or invalid token"},
    403: {"description": "your role may not do this"},
    404: {"description": "no such record (or not yours)"},
    413: {"description": "body or file too large"},
    415: {"description": "unsupported content type or file"},
    422: {"description": "invalid fields"},
    429: {"description": "rate limit exceeded; see Retry-After"},
    503: {"description": "the model is busy or restarting; see Retry-After"},
}
