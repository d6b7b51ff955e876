"""What of a consultation goes back to the model: only answered turns, and only as much as its prompt
limit holds, counted in the model's own tokens (a Chinese character can be three of them).

A message that cannot fit even alone is refused before it is stored (:func:`check_message`); one that fits
alone gets as much earlier context as still fits, the oldest dropped first (:func:`fit_question`).
"""

from __future__ import annotations

from collections.abc import Sequence

from agents.safety import quote_for_model
from agents.state import Message
from tools.healthgpt import HealthGPTClient


class MessageTooLong(ValueError):
    """A message longer than the model's prompt limit, even with no context around it."""

    def __init__(self, tokens: int, limit: int) -> None:
        super().__init__(
            f"this message is too long for the model: about {tokens} tokens where at most {limit} fit; "
            "shorten it or send it in parts"
        )
        self.tokens, self.limit = tokens, limit


def check_message(client: HealthGPTClient, text: str, has_image: bool = False) -> None:
    """Raises :class:`MessageTooLong` when ``text``, as the consult step sends it, cannot fit."""
    size = client.prompt_size(quote_for_model(text), has_image)
    if size is not None and not size.fits:
        raise MessageTooLong(size.tokens, size.limit)


def answered_turns(messages: Sequence[Message], turns: int) -> list[Message]:
    """The last ``turns`` (question, answer) pairs before the current message. A user message with no
    answer after it is a turn that failed (or a crash cut short): it never goes back to the model."""
    earlier = list(messages[:-1])
    pairs: list[Message] = []
    for i, message in enumerate(earlier[:-1]):
        if message["role"] == "user" and earlier[i + 1]["role"] == "assistant":
            pairs += [message, earlier[i + 1]]
    return pairs[-2 * turns :] if turns > 0 else []


def compose_question(text: str, earlier: Sequence[Message], snippets: Sequence[str]) -> str:
    question = quote_for_model(text)
    if earlier:
        transcript = "\n".join(f"{m['role']}: {m['content']}" for m in earlier)
        question = f"Conversation so far:\n{transcript}\n\n{question}"
    if snippets:
        question = "Relevant earlier records of this patient:\n" + "\n".join(snippets) + f"\n\n{question}"
    return question


def fit_question(
    client: HealthGPTClient,
    text: str,
    earlier: Sequence[Message],
    snippets: Sequence[str],
    has_image: bool = False,
) -> tuple[str, int]:
    """The consult question with as much context as fits, and how many of ``snippets`` it kept: the
    oldest turn goes first (a question with its answer), then the earlier records, least relevant first."""
    earlier, snippets = list(earlier), list(snippets)
    while True:
        question = compose_question(text, earlier, snippets)
        if not earlier and not snippets:
            return question, 0
        size = client.prompt_size(question, has_image)
        if size is None or size.fits:
            return question, len(snippets)
        if earlier:
            earlier = earlier[2:]
        else:
            snippets = snippets[:-1]  # retrieval ranks the best first
