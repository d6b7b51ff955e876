"""The Health Agent's nodes: each takes the checkpointed state (and, where it needs tools, records or
the turn's image, the runtime context) and returns the keys it changes. agents.graph wires them.

Safety-relevant steps are deterministic code: the red-flag screen, the route table, escalation, the
disclaimer and the preliminary label. The model only drafts text (consult, second read) and images.
"""

from __future__ import annotations

import io
import re
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from langgraph.config import get_stream_writer
from langgraph.runtime import Runtime
from langgraph.types import interrupt
from PIL import Image

from agents import budget, prompts
from agents.context import TurnContext
from agents.routing import Route, route
from agents.safety import injection_findings, screen_output
from agents.state import ChatState
from memory.records import RecordError
from tools.healthgpt import AskRequest, ImageRequest, ImageTask, Provenance
from tools.qc import check_image
from tools.reads import READ_QUESTIONS
from tools.retrieval import build_index
from tools.series import SliceFinding, merged_findings, series_draft
from tools.triage import ADVICE, CATEGORIES, CATEGORIES_ZH
from tools.triage.language import language_name, unscreened_language
from tools.triage.text import language_of


def intake(state: ChatState) -> ChatState:
    """Starts the turn: its language, and the per-turn keys cleared. The turn's uploads were taken in
    before the graph ran (agents.intake), so here they are only pixel-store keys and a study id."""
    text = state["messages"][-1]["content"] if state.get("messages") else ""
    return {
        "language": language_of(text),
        "request": state.get("request") or "message",
        "tool_results": {},
        "draft": "",
        "provenance": None,
        "escalated": False,
        "refusal": None,
    }


def safety_screen(state: ChatState, runtime: Runtime[TurnContext]) -> ChatState:
    text = state["messages"][-1]["content"]
    screening = runtime.context.screen(text)
    # An explicit API request (second read, image task) outranks the intent: the route table decides.
    # The screen reads English and Chinese; a message in another language must not look screened.
    triage = {**screening.triage.model_dump(), "unscreened_language": unscreened_language(text)}
    return {"triage": triage, "injection": injection_findings(text), "intent": screening.intent.intent}


def decide_route(state: ChatState) -> ChatState:
    # A message that tries to steer the system is answered as a plain consultation, nothing more.
    intent = "consult" if state.get("injection") else state["intent"]
    chosen, refusal = route(
        state["actor"]["role"], state.get("request", "message"), intent, state["triage"]["red_flag"]
    )
    if chosen is Route.second_read and state.get("study_id") is None:
        chosen, refusal = Route.refuse, "needs_study"
    return {"route": chosen.value, "refusal": refusal}


def consult(state: ChatState, runtime: Runtime[TurnContext]) -> ChatState:
    context = runtime.context
    earlier = budget.answered_turns(state["messages"], context.history_turns)
    history = _relevant_history(state, context)
    question, kept = budget.fit_question(
        context.model(),
        state["messages"][-1]["content"],
        earlier,
        [text for _, text in history],
        has_image=context.image is not None,
    )
    request = AskRequest(question=question, image=context.image, max_new_tokens=context.max_new_tokens)
    writer = get_stream_writer()
    result = None
    for chunk in context.model().ask_stream(request):
        if chunk.delta:
            writer({"token": chunk.delta})
        if chunk.result is not None:
            result = chunk.result
    assert result is not None
    return {
        "draft": result.text,
        "provenance": result.provenance.model_dump(),
        "tool_results": {"history_used": [record for record, _ in history[:kept]]},
    }


def second_read(state: ChatState, runtime: Runtime[TurnContext]) -> ChatState:
    context = runtime.context
    with context.open_records() as records:
        study = records.get_study(state["study_id"])
        modality, pixel_key = study.modality or "medical", study.pixel_key
        slices = list((study.deidentified_metadata or {}).get("read_slices") or [])
        total = int((study.deidentified_metadata or {}).get("slice_count") or 1)
    if len(slices) > 1 and context.pixels is not None:
        return _series_read(state, context, modality, slices, total)
    image = context.pixels.get(pixel_key) if (context.pixels and pixel_key) else None
    # The dataset builder reads the same table back to pair corrections with their questions.
    questions = [READ_QUESTIONS[section].format(modality=modality) for section in ("findings", "impression")]
    asks = [AskRequest(question=q, image=image, max_new_tokens=context.max_new_tokens) for q in questions]
    # Sent together, so the batching engine decodes both in one batch instead of one after the other.
    with ThreadPoolExecutor(max_workers=len(asks)) as pool:
        findings, impression = pool.map(context.model().ask, asks)
    confidence = round(float(min(findings.mean_logprob, impression.mean_logprob)), 4)
    qc = _qc(image)
    draft = (
        f"Findings: {findings.text or '(none stated)'}\n"
        f"Impression: {impression.text or '(none stated)'}\n"
        f"Confidence (mean token log-probability): {confidence}"
    )
    if qc:
        draft += "\nImage quality: " + "; ".join(qc)
    provenance = {**findings.provenance.model_dump(), "consultation_id": state["consultation_id"]}
    results = {"findings": findings.text, "impression": impression.text, "confidence": confidence, "qc": qc}
    return _drafted(state, context, draft, provenance, results)


def _drafted(
    state: ChatState, context: TurnContext, draft: str, provenance: dict[str, Any], results: dict[str, Any]
) -> ChatState:
    # Written before the review interrupt, in its own node, so resuming the thread does not write it again.
    with context.open_records() as records:
        read_id = records.add_read(state["study_id"], draft, provenance).id
    # What the physician is shown while the read awaits sign-off (compose writes the final answer).
    answer, disclaimer = _presented(draft, provenance, state.get("language", "en"), preliminary=True)
    return {
        "draft": draft,
        "read_id": read_id,
        "provenance": provenance,
        "tool_results": results,
        "answer": answer,
        "disclaimer": disclaimer,
    }


def _series_read(
    state: ChatState, context: TurnContext, modality: str, slices: list[dict[str, Any]], total: int
) -> ChatState:
    """A read over several slices: the findings question on each, the impression on the middle one, all
    sent at once so the engine decodes them in one batch; one draft citing the slices by number."""
    assert context.pixels is not None
    pictures = [(int(item["slice"]), context.pixels.get(item["key"])) for item in slices]
    middle_number, middle = pictures[len(pictures) // 2]
    question, tokens = READ_QUESTIONS["findings"].format(modality=modality), context.max_new_tokens
    asks = [AskRequest(question=question, image=png, max_new_tokens=tokens) for _, png in pictures]
    asks.append(AskRequest(question=READ_QUESTIONS["impression"], image=middle, max_new_tokens=tokens))
    with ThreadPoolExecutor(max_workers=len(asks)) as pool:
        *per_slice, impression = pool.map(context.model().ask, asks)
    confidence = round(float(min(r.mean_logprob for r in [*per_slice, impression])), 4)
    findings = [SliceFinding(number, r.text) for (number, _), r in zip(pictures, per_slice, strict=True)]
    draft = series_draft(findings, impression.text, middle_number, total, confidence)
    qc = _qc(middle)
    if qc:
        draft += "\nImage quality: " + "; ".join(qc)
    numbers = [number for number, _ in pictures]
    provenance = {
        **impression.provenance.model_dump(),
        "consultation_id": state["consultation_id"],
        "slices_read": numbers,
        "slice_count": total,
    }
    results = {
        "findings": merged_findings(findings, total),
        "impression": impression.text,
        "confidence": confidence,
        "qc": qc,
        "slices_read": numbers,
    }
    return _drafted(state, context, draft, provenance, results)


def review(state: ChatState, runtime: Runtime[TurnContext]) -> ChatState:
    decision = interrupt({"read_id": state["read_id"], "draft": state["draft"], "status": "preliminary"})
    action = decision.get("action")
    text = (decision.get("text") or "").strip()
    with runtime.context.open_records() as records:
        read = records.get_read(state["read_id"])
        if read.status.value == "preliminary":  # idempotent if the node runs again
            final = state["draft"] if action == "sign" else text
            records.sign_read(state["read_id"], final)
            if action == "correct":
                records.add_feedback("correction", {"text": text, "draft": state["draft"]}, read_id=read.id)
        status = read.status.value
        signed = read.provenance or {}
        as_drafted = (read.physician_final or "").strip() == read.ai_draft.strip()
    # The answer is the physician's text or the draft they signed: its provenance says so (the records
    # decided which when signing), and a correction carries none of the model's.
    author = signed.get("author") or ("ai+physician" if as_drafted else "physician")
    signer = signed.get("signed_by")
    if author == "physician":
        provenance = Provenance(author="physician", signed_by=signer).model_dump()
    else:
        provenance = {**(state.get("provenance") or {}), "author": author, "signed_by": signer}
    return {
        "approval": {"action": action, "status": status},
        "draft": read.physician_final or state["draft"],
        "provenance": provenance,
    }


def image_task(state: ChatState, runtime: Runtime[TurnContext]) -> ChatState:
    context = runtime.context
    task = ImageTask(state.get("image_task") or ImageTask.reconstruction)
    instruction = state["messages"][-1]["content"] if task is ImageTask.text_to_image else None
    request = ImageRequest(task=task, image=context.image, instruction=instruction)
    result = context.model().generate_image(request)
    key = context.pixels.put(result.png) if context.pixels else None
    return {
        "draft": f"Generated image ({task.value.replace('_', ' ')}).",
        "provenance": result.provenance.model_dump(),
        "tool_results": {"image_key": key, "vq_tokens": len(result.vq_indices)},
    }


def history(state: ChatState, runtime: Runtime[TurnContext]) -> ChatState:
    """The patient's record, in the language of the question (the records' own text stays as written)."""
    words = prompts.HISTORY[state.get("language", "en")]
    patient_id = state.get("patient_id")
    if patient_id is None:
        return {"draft": words["no_patient"]}
    with runtime.context.open_records() as records:
        consultations = records.list_consultations(patient_id)
        studies = records.list_studies(patient_id)
        lines = [words["summary"].format(consultations=len(consultations), studies=len(studies))]
        for study in studies[-5:]:
            reads = records.list_reads(study.id)
            signed = [r for r in reads if r.status.value != "preliminary"]
            line = (
                words["study"]
                .format(id=study.id, modality=study.modality or words["image"], description=study.description)
                .rstrip()
            )
            if signed:
                line += words["signed"].format(text=signed[-1].physician_final[:200])
            lines.append(line)
    return {"draft": "\n".join(lines)}


# An admin's request to start a refresh, in either language; the plugin named, else comprehension.
_START_FINETUNE = re.compile(r"\b(fine-?tune|retrain|refresh)\b|微调|重新训练|训练", re.IGNORECASE)
_PLUGIN_NAMED = re.compile(r"\b(comprehension|generation)\b|(理解)|(生成)", re.IGNORECASE)


def _plugin_asked(text: str) -> str:
    found = _PLUGIN_NAMED.search(text)
    if found is None:
        return "comprehension"
    return (
        "generation" if (found.group(1) or "").lower() == "generation" or found.group(3) else "comprehension"
    )


def admin(state: ChatState, runtime: Runtime[TurnContext]) -> ChatState:
    """Feedback, adapters and fine-tune jobs for an admin; "fine-tune generation" (微调) starts a job."""
    text = state["messages"][-1]["content"]
    started: list[str] = []
    if _START_FINETUNE.search(text):
        plugin = _plugin_asked(text)
        if runtime.context.finetunes is None:
            started.append("Fine-tunes cannot be started from this chat here: use POST /v1/admin/finetunes.")
        else:
            try:
                job_id, status = runtime.context.finetunes.start_for_turn(plugin)
                started.append(f"Started fine-tune job {job_id} on {plugin} ({status}); follow it at "
                               f"/v1/admin/finetunes/{job_id}.")  # fmt: skip
            except RecordError as exc:
                started.append(f"Could not start a fine-tune on {plugin}: {exc}")
    with runtime.context.open_records() as records:
        aggregates = records.feedback_aggregates()
        adapters = records.list_adapters()
        jobs = records.list_jobs(limit=5)
    lines = [*started, "Feedback by plugin / adapter version / kind:"]
    lines += [f"- {a.plugin} {a.adapter_version} {a.kind}: {a.count}" for a in aggregates] or ["- none yet"]
    lines.append("Adapter versions:")
    lines += [f"- {a.plugin} {a.version}: {a.status.value}" for a in adapters] or ["- none registered"]
    lines.append("Recent fine-tune jobs:")
    lines += [f"- job {j.id} {j.plugin}: {j.status.value}" for j in jobs] or ["- none yet"]
    return {"draft": "\n".join(lines), "tool_results": {"finetune": started}}


def escalate(state: ChatState, runtime: Runtime[TurnContext]) -> ChatState:
    language = state.get("language", "en")
    category = state["triage"].get("category") or "red flag"
    label, shown = _category_labels(category, language)
    text = prompts.EMERGENCY[language].format(category=shown)
    if category == "suicide":
        text += " " + prompts.CRISIS_LINES[language]
    with runtime.context.open_records() as records:
        records.flag_consultation(state["consultation_id"], f"red flag: {label}")
        notified = records.notify_care_team(
            state["consultation_id"],
            "red_flag",
            f"Red flag ({label}) in consultation {state['consultation_id']}",
        )
    return {"draft": text, "escalated": True, "tool_results": {"notified": notified}}


def same_day(state: ChatState, runtime: Runtime[TurnContext]) -> ChatState:
    """The screen found an urgent (same-day) condition: the answer says so, the care team hears of it
    at a lower priority than a red flag, and the decision goes into the answer's provenance."""
    language = state.get("language", "en")
    screen = state["triage"]
    category = screen.get("category") or "other"
    label, shown = _category_labels(category, language)
    advice = f"{ADVICE['urgent'][language]} ({shown})"
    with runtime.context.open_records() as records:
        notified = records.notify_care_team(
            state["consultation_id"],
            "same_day",
            f"Same-day care advised ({label}) in consultation {state['consultation_id']}",
        )
    provenance = {**(state.get("provenance") or {}), "triage": _triage_provenance(screen)}
    return {
        "draft": f"{state.get('draft', '')}\n\n{advice}".strip(),
        "provenance": provenance,
        "tool_results": {**(state.get("tool_results") or {}), "notified": notified},
    }


def refuse(state: ChatState) -> ChatState:
    reason = state.get("refusal") or "admin_only"
    return {"draft": prompts.REFUSALS[reason][state.get("language", "en")]}


def compose(state: ChatState) -> ChatState:
    text, disclaimer = _presented(
        state.get("draft") or "(the model returned no text)",
        state.get("provenance") or {},
        state.get("language", "en"),
        preliminary=state.get("route") == Route.second_read and not state.get("approval"),
    )
    return {"answer": text, "disclaimer": disclaimer}


def _presented(text: str, provenance: dict[str, Any], language: str, *, preliminary: bool) -> tuple[str, str]:
    """A draft as its reader sees it, and the note that goes with it: an unsigned read is labelled
    preliminary; demo weights are said to be so."""
    author = provenance.get("author", "ai")
    if preliminary:
        text = f"{prompts.PRELIMINARY_NOTICE[language]}\n{text}"
    # A physician's own text is never labelled as the model's: no demo notice, no AI disclaimer. A
    # signed draft keeps the demo notice (its words are still the demo model's) with a signed note.
    if provenance.get("demo_weights") and author != "physician":
        text = f"{text}\n\n{prompts.DEMO_WEIGHTS_NOTICE}"
    disclaimer = prompts.AUTHOR_NOTES[author][language] if author != "ai" else prompts.DISCLAIMERS[language]
    return text, disclaimer


def post_check(state: ChatState, runtime: Runtime[TurnContext]) -> ChatState:
    answer = state["answer"]
    update: ChatState = {}
    if state.get("route") == Route.consult and screen_output(state.get("draft", "")).red_flag:
        # The model's own text speaks of an emergency: never leave it without the advice.
        answer = f"{answer}\n\n{prompts.POST_CHECK_ADVICE[state.get('language', 'en')]}"
    unscreened = (state.get("triage") or {}).get("unscreened_language")
    if unscreened and state["actor"]["role"] == "patient" and state.get("route") != Route.escalate:
        language = language_name(unscreened)
        answer = f"{answer}\n\n{prompts.UNSCREENED_NOTICE.format(language=language)}"
        if not state.get("unscreened_notified"):
            # What no rule could read, a person reads: the care team hears once per consultation.
            with runtime.context.open_records() as records:
                notified = records.notify_care_team(
                    state["consultation_id"],
                    "unscreened",
                    f"A message in {language} could not be screened for warning signs in consultation "
                    f"{state['consultation_id']}: please read it",
                )
            update = {
                "unscreened_notified": True,
                "tool_results": {**(state.get("tool_results") or {}), "notified_unscreened": notified},
            }
    return {**update, "answer": answer, "messages": [{"role": "assistant", "content": answer}]}


def _category_labels(category: str, language: str) -> tuple[str, str]:
    """(the English label for the care team, the label shown to the patient in their language)."""
    label = CATEGORIES.get(category, category)
    return label, CATEGORIES_ZH.get(category, label) if language == "zh" else label


def _triage_provenance(screen: dict[str, Any]) -> dict[str, Any]:
    keys = ("level", "category", "condition", "condition_name", "decided_by", "sources")
    return {key: screen.get(key) for key in keys}


def _relevant_history(state: ChatState, context: TurnContext, k: int = 2) -> list[tuple[str, str]]:
    """Snippets of this patient's own earlier records that match the message (signed reads and the
    patient's words in earlier consultations). Only what the records layer releases to this actor is
    indexed, and only this patient's."""
    patient_id = state.get("patient_id")
    if patient_id is None or (context.records is None and context.history is None):
        return []
    texts = context.patient_history(patient_id, state.get("consultation_id"))
    items = [(record, text, {"kind": kind}) for record, text, kind in texts]
    if not items:
        return []
    index = build_index(patient_id, items)
    hits = index.search(state["messages"][-1]["content"], k=k, min_score=0.35)
    return [(hit.id, f"- ({hit.metadata['kind']}) {hit.snippet}") for hit in hits]


def _qc(image: bytes | None) -> list[str]:
    """Image-quality notes for a read (empty when the image is fine)."""
    if image is None:
        return ["no image available"]
    with Image.open(io.BytesIO(image)) as picture:
        report = check_image(picture)
    return [flag.message for flag in report.flags]
