"""The one-call chat: a message, in a new consultation unless a thread is named."""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.concurrency import run_in_threadpool

from serving.api.bodies import CHAT_BODY, check_message, read_body
from serving.api.deps import Caller, Services
from serving.api.schemas import ERROR_RESPONSES, ChatRequest, ChatResponse
from serving.observability import observe_turn
from serving.turns import TurnInput, open_consultation, run_turn

router = APIRouter(prefix="/v1/chat", tags=["consultations"], responses=ERROR_RESPONSES)


@router.post("", response_model=ChatResponse, openapi_extra=CHAT_BODY)
async def chat(request: Request, principal: Caller, services: Services) -> ChatResponse:
    """Shortcut: send a message, opening a consultation when no ``thread_id`` is given."""
    settings = services.settings
    body, uploads = await read_body(request, ChatRequest, settings.max_upload_bytes)
    check_message(settings, body.message)
    thread_id = body.thread_id or await run_in_threadpool(open_consultation, services, principal, None)
    outcome = await run_in_threadpool(
        run_turn, services, principal, thread_id, TurnInput(body.message, uploads=uploads)
    )
    observe_turn(outcome)
    return ChatResponse(thread_id=thread_id, **outcome)
