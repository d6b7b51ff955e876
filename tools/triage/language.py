"""Which messages the red-flag screen cannot read.

The screen's rules and its learned second opinion know English and Chinese. A message in another language
passes through them unscreened — "dolor de pecho muy fuerte" finds no rule — so it must not look screened:
the agent says so, with the emergency number, instead of letting the silence read as "nothing urgent".

Script first (a message mostly in Cyrillic, Hangul, Arabic… letters is no language the screen reads),
then, for Latin letters, a naive Bayes language identifier (py3langid, trained on many languages) that
must be sure: a false alarm adds a notice to an English answer, a miss leaves things as they were, so the
bar is high and short texts ("chest pain") are never judged.
"""

from __future__ import annotations

import unicodedata
from collections import Counter
from functools import lru_cache
from typing import Any

from tools.triage.text import language_of

SCREENED = frozenset({"en", "zh"})
MIN_LATIN_LETTERS = 12  # below this a Latin-script guess is too often wrong to act on
MIN_CONFIDENCE = 0.9
MAX_CHARS = 2000
# The identifier chooses among widely spoken languages only: obscure ones it knows (Walloon, Breton,
# Latin…) are where short English texts land by chance.
CANDIDATES = (
    "en", "es", "fr", "de", "it", "pt", "nl", "pl", "ro", "tr", "id", "vi", "sv", "da", "no", "cs", "hu",
    "fi", "ru", "uk", "ar", "fa", "hi", "ja", "ko", "zh", "he", "el", "th", "ms", "tl", "sw",
)  # fmt: skip
NAMES = {
    "es": "Spanish", "fr": "French", "de": "German", "it": "Italian", "pt": "Portuguese", "nl": "Dutch",
    "pl": "Polish", "ro": "Romanian", "tr": "Turkish", "id": "Indonesian", "vi": "Vietnamese",
    "sv": "Swedish", "da": "Danish", "no": "Norwegian", "cs": "Czech", "hu": "Hungarian", "fi": "Finnish",
    "ru": "Russian", "uk": "Ukrainian", "ar": "Arabic", "fa": "Persian", "hi": "Hindi", "ja": "Japanese",
    "ko": "Korean", "he": "Hebrew", "el": "Greek", "th": "Thai", "ms": "Malay", "tl": "Tagalog",
    "sw": "Swahili",
}  # fmt: skip


def unscreened_language(text: str) -> str | None:
    """The language code of a message the screen cannot read ('und' when the script is known but not
    the language), or None: English, Chinese, or not sure enough to say otherwise."""
    letters = [c for c in text[:MAX_CHARS] if c.isalpha()]
    if not letters:
        return None
    scripts = Counter(_script(c) for c in letters)
    share = {name: count / len(letters) for name, count in scripts.items()}
    if share.get("kana", 0.0) >= 0.2:  # Japanese writes kanji too: kana tell it from Chinese
        return "ja"
    if language_of(text) == "zh":  # the screen reads it as Chinese
        return None
    if share.get("latin", 0.0) >= 0.5:
        if len(letters) < MIN_LATIN_LETTERS:
            return None
        code, confidence = _identifier().classify(text[:MAX_CHARS])
        return code if code not in SCREENED and confidence >= MIN_CONFIDENCE else None
    code, _ = _identifier().classify(text[:MAX_CHARS])
    return code if code not in SCREENED else "und"


def language_name(code: str) -> str:
    return NAMES.get(code, "a language other than English or Chinese")


def _script(char: str) -> str:
    name = unicodedata.name(char, "")
    if name.startswith("LATIN"):
        return "latin"
    if name.startswith("CJK"):
        return "cjk"
    if name.startswith(("HIRAGANA", "KATAKANA")):
        return "kana"
    return "other"


@lru_cache(maxsize=1)
def _identifier() -> Any:
    # Loaded on first use (0.3-0.6 s), once per process.
    from py3langid.langid import MODEL_FILE, LanguageIdentifier

    identifier = LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)
    identifier.set_languages(list(CANDIDATES))
    return identifier
