"""What of a consultation goes back to the model: answered turns only, counted in the model's tokens."""

from __future__ import annotations

import pytest
from PIL import Image

from agents import MessageTooLong, check_message
from agents.budget import answered_turns, compose_question, fit_question
from tools.healthgpt import InProcessHealthGPT, PromptSize


@pytest.fixture(scope="module")
def client(tiny_model):
    client = InProcessHealthGPT(tiny_model)
    yield client
    client.close()


@pytest.mark.parametrize("has_image", [False, True])
def test_prompt_size_counts_what_the_engine_prefills(client, tiny_model, has_image) -> None:
    question = "我咳嗽了一个星期 and a fever"
    image = Image.new("RGB", (40, 30)) if has_image else None
    prefilled = tiny_model.embed_prompt(question, image, "comprehension").shape[0]
    size = client.prompt_size(question, has_image)
    assert size == PromptSize(tokens=prefilled, limit=client.engine.limits.max_prompt_tokens)


def test_a_message_that_cannot_fit_alone_is_refused(client) -> None:
    check_message(client, "我咳嗽了一个星期" * 100)
    with pytest.raises(MessageTooLong) as refused:
        check_message(client, "我咳嗽了一个星期" * 180)  # 1,440 characters, far under the character cap
    assert refused.value.limit == 4096 and refused.value.tokens > 4096


def test_unanswered_messages_never_go_back_to_the_model() -> None:
    def user(text):
        return {"role": "user", "content": text}

    def bot(text):
        return {"role": "assistant", "content": text}

    # Orphans of failed turns (or of a crash) sit between answered turns; the last message is the current one.
    messages = [user("q1"), bot("a1"), user("orphan1"), user("orphan2"), user("q2"), bot("a2"), user("now")]
    assert answered_turns(messages, 6) == [user("q1"), bot("a1"), user("q2"), bot("a2")]
    assert answered_turns(messages, 1) == [user("q2"), bot("a2")]
    assert answered_turns([user("orphan"), user("now")], 6) == []


class _Counter:
    """Counts one token per character, up to ``limit``."""

    def __init__(self, limit: int) -> None:
        self.limit = limit

    def prompt_size(self, question, has_image=False, plugin="comprehension"):
        return PromptSize(tokens=len(question), limit=self.limit)


def test_the_oldest_context_goes_first_until_the_prompt_fits() -> None:
    turns = [
        {"role": "user", "content": "OLDTURN " * 10},
        {"role": "assistant", "content": "x"},
        {"role": "user", "content": "NEWTURN"},
        {"role": "assistant", "content": "y"},
    ]
    snippets = ["- (signed read) SNIPPET1", "- (signed read) SNIPPET2"]
    just_fits = len(compose_question("hello", turns[2:], snippets))
    question, kept = fit_question(_Counter(just_fits), "hello", turns, snippets)
    assert "OLDTURN" not in question and "NEWTURN" in question and "SNIPPET2" in question and kept == 2
    # Then the earlier records, the least relevant (last) first; the message itself always stays.
    just_fits = len(compose_question("hello", [], snippets[:1]))
    question, kept = fit_question(_Counter(just_fits), "hello", turns, snippets)
    assert "TURN" not in question and "SNIPPET1" in question and "SNIPPET2" not in question and kept == 1
    question, kept = fit_question(_Counter(5), "hello", turns, snippets)
    assert question == compose_question("hello", [], []) and kept == 0
