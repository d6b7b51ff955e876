"""Conversation templates of the released HealthGPT models (single-turn prompts).

All are "system + sep, then role + message + sep per turn; the open assistant turn contributes only its
role string". The system prompts are the ones the released checkpoints were run with, kept verbatim
(the Phi-4 one is the model card's sample persona: odd, but it is what L14 saw).
"""

from __future__ import annotations

from dataclasses import dataclass

IMAGE_PLACEHOLDER = "<image>"


@dataclass(frozen=True)
class Template:
    system: str
    user: str
    assistant: str
    sep: str

    def prompt(self, user_message: str, assistant_prefix: str = "") -> str:
        """The prompt for one user turn, ending where the assistant starts to speak."""
        return (
            self.system + self.sep + self.user + user_message + self.sep + self.assistant + assistant_prefix
        )


TEMPLATES: dict[str, Template] = {
    "phi3_instruct": Template(
        system="<|system|>\nYou are a helpful AI assistant.",
        user="\n<|user|>\n",
        assistant="\n<|assistant|>\n",
        sep="<|end|>",
    ),
    "phi4_instruct": Template(
        system="<|im_start|>system<|im_sep|>\n"
        "You are a medieval knight and must provide explanations to modern people.",
        user="\n<|im_start|>user<|im_sep|>\n",
        assistant="\n<|im_start|>assistant<|im_sep|>\n",
        sep="<|im_end|>",
    ),
    "qwen_2": Template(
        system="<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.",
        user="<|im_start|>user\n",
        assistant="<|im_start|>assistant\n",
        sep="<|im_end|>\n",
    ),
}


def get_template(name: str) -> Template:
    try:
        return TEMPLATES[name]
    except KeyError:
        raise ValueError(f"template {name!r} is not available yet; known: {sorted(TEMPLATES)}") from None


def user_message(question: str, has_image: bool) -> str:
    """The official order: the image placeholder first, then a newline and the question."""
    return f"{IMAGE_PLACEHOLDER}\n{question}" if has_image else question
