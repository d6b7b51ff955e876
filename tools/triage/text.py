"""Text normalisation before matching: NFKC, lower case, straight apostrophes, dropped apostrophes and
common misspellings of the knowledge base's own words repaired, Chinese filler adverbs removed.

The reasons and evidence the screen returns quote this normalised text."""

from __future__ import annotations

import re
import unicodedata
from functools import cache, lru_cache

from tools import embeddings

MAX_CHARS = 8000  # the gateway's message cap; longer input is screened on its first MAX_CHARS characters

_CONTRACTIONS = {
    "cant": "can't", "dont": "don't", "wont": "won't", "doesnt": "doesn't", "didnt": "didn't",
    "isnt": "isn't", "arent": "aren't", "wasnt": "wasn't", "werent": "weren't", "havent": "haven't",
    "hasnt": "hasn't", "hadnt": "hadn't", "couldnt": "couldn't", "wouldnt": "wouldn't", "im": "i'm",
    "ive": "i've", "theyre": "they're", "youre": "you're", "thats": "that's", "whats": "what's",
    "u": "you", "ur": "your", "cannot": "can't", "hes": "he's", "shes": "she's", "pls": "please",
}  # fmt: skip


class Lexicon:
    """The plain words of a knowledge base's English patterns: a misspelling one edit away from one of
    them is read as it (first letters are rarely mistyped, so candidates share the first letter).
    Hashed by identity, so corrections are cached per knowledge base cheaply."""

    def __init__(self, english_patterns: list[str]) -> None:
        words: set[str] = set()
        for pattern in english_patterns:
            words.update(re.findall(r"(?<![\\\w])[a-z]{5,}(?![\w(?\\\[{*+])", pattern))
        self.words = tuple(sorted(words))
        self.known = frozenset(self.words)
        # Stems the patterns extend ("droop\w*", "faint(ed|ing)?", "stents?"): a word that starts with
        # one is the knowledge base's own, never "corrected" into another author's word.
        stems: dict[str, set[str]] = {}
        for pattern in english_patterns:
            for stem, optional in re.findall(r"(?<![\\\w])([a-z]{4,})(\??)", pattern):
                stems.setdefault(stem[0], set()).add(stem[:-1] if optional else stem)
        self.stems = {letter: tuple(sorted(group)) for letter, group in stems.items()}

    def protects(self, word: str) -> bool:
        return word in self.known or any(word.startswith(stem) for stem in self.stems.get(word[0], ()))


@cache
def _default_lexicon() -> Lexicon:
    from tools.triage.knowledge import knowledge_base

    return knowledge_base().lexicon


def _edit_distance(a: str, b: str, limit: int) -> int:
    """Optimal-string-alignment distance (adjacent swaps count one), capped just above ``limit``."""
    if abs(len(a) - len(b)) > limit:
        return limit + 1
    before: list[int] = []
    previous = list(range(len(b) + 1))
    for i in range(1, len(a) + 1):
        current = [i] + [0] * len(b)
        for j in range(1, len(b) + 1):
            cost = 0 if a[i - 1] == b[j - 1] else 1
            current[j] = min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + cost)
            if i > 1 and j > 1 and a[i - 1] == b[j - 2] and a[i - 2] == b[j - 1]:
                current[j] = min(current[j], before[j - 2] + 1)
        before, previous = previous, current
    return previous[-1]


@lru_cache(maxsize=16384)
def _correct(word: str, lexicon: Lexicon) -> str:
    if word in _CONTRACTIONS:
        return _CONTRACTIONS[word]
    if len(word) < 5 or lexicon.protects(word) or embeddings.known_word(word):
        return word
    limit = 1 if len(word) < 9 else 2
    best, best_distance = word, limit + 1
    for candidate in lexicon.words:  # sorted: ties resolve the same way every time
        if candidate[0] != word[0]:
            continue
        distance = _edit_distance(word, candidate, limit)
        if distance < best_distance:
            best, best_distance = candidate, distance
    return best


# Chinese adverbs that sit between the parts of a phrase ("嘴唇都紫了") and carry no clinical meaning.
_ZH_FILLER = re.compile(r"(?<=[\u4e00-\u9fff])(?:都|也|还|就|却|真的|简直)(?=[\u4e00-\u9fff])")
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\ufffd]")


def normalise(text: str, lexicon: Lexicon | None = None) -> str:
    """``lexicon``: the words misspellings are corrected to (default: the clinical knowledge base's)."""
    words = lexicon if lexicon is not None else _default_lexicon()
    text = unicodedata.normalize("NFKC", text[:MAX_CHARS]).lower()
    text = _CONTROL.sub(" ", text)
    text = re.sub(r"[\u2018\u2019\u02bc`´]", "'", text)
    text = re.sub(r"[a-z]+", lambda m: _correct(m.group(0), words), text)
    text = _ZH_FILLER.sub("", text)
    return re.sub(r"[ \t]+", " ", text).strip()


def language_of(text: str) -> str:
    """'zh' when a good part of the letters are CJK ideographs, else 'en'."""
    letters = [c for c in text if c.isalpha()]
    if not letters:
        return "en"
    cjk = sum(1 for c in letters if unicodedata.name(c, "").startswith("CJK UNIFIED"))
    return "zh" if cjk / len(letters) >= 0.3 else "en"
