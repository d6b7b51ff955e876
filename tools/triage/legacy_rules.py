"""Red-flag triage: does a message describe an emergency that needs help now?

Two signals, in English and Chinese:

1. **Rules.** Regular expressions find clinical *concepts* (chest pain, slurred speech, a baby's age …)
   clause by clause; each occurrence then gets an assertion status from a small ConText-style pass
   (our own): *negated* ("no chest pain", "没有胸痛"; the scope ends at the clause), *historical*
   ("years ago", "去年", "中风过", family history; the scope is the sentence unless a clause says "now"),
   *hypothetical* ("if", "signs of", "如果", "怎么预防") or *habitual* ("sometimes"). Negation words
   inside a finding ("can't breathe", "叫不醒") are part of it, not a negation. Only affirmed concepts
   count, and rules combine them over the whole message (chest pain + sweating). A rule that fires
   always raises the flag.
2. **Similarity.** Text with no negation, history, hypothesis or "mild" marker is compared with
   emergency and benign exemplars: English with all-MiniLM-L6-v2, Chinese (which that model cannot
   read) with character n-grams. Near an emergency exemplar and nearer to it than to any benign one
   raises the flag too. Thresholds are picked on the dev split of ``tests/tools/data/triage_eval.jsonl``.

Deterministic: the same text gives the same result. Recall matters more than false alarms here: a
missed emergency costs more than a needless "get help now". Written for users' messages; the reasons
quote the normalised text (lower case, Chinese filler adverbs removed).
"""

from __future__ import annotations

import logging
import re
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from tools import embeddings

log = logging.getLogger(__name__)

# Similarity signal: fire when the closest emergency exemplar scores at least SIM_THRESHOLD and beats
# the closest benign one by SIM_MARGIN. Picked on the dev split by tests/tools/triage_eval.sweep (the
# most recall with at most 2.5% false alarms from similarity alone); a test checks they still agree.
# The margin does most of the work: "nearer to an emergency than to anything ordinary".
SIM_THRESHOLD = 0.35
SIM_MARGIN = 0.03
# The Chinese counterpart, on character n-grams (the English model cannot read Chinese).
NGRAM_THRESHOLD = 0.30
NGRAM_MARGIN = 0.0

# Order of precedence: when several fire, the first names the result (specific causes before the
# generic "unresponsive" and "breathing", which they often bring along).
CATEGORIES: dict[str, str] = {
    "cardiac": "possible heart attack",
    "stroke": "possible stroke",
    "anaphylaxis": "possible anaphylaxis",
    "suicide": "suicidal thoughts or self-harm",
    "overdose": "overdose or poisoning",
    "head_injury": "head injury with loss of consciousness or warning signs",
    "seizure": "prolonged or repeated seizure",
    "pregnancy": "bleeding or severe pain in pregnancy",
    "gi_bleed": "vomiting blood or black, tarry stools",
    "bleeding": "uncontrolled bleeding",
    "meningitis": "possible meningitis",
    "sepsis": "possible sepsis",
    "infant_fever": "fever in a baby under 3 months",
    "thunderclap_headache": "sudden, severe (thunderclap) headache",
    "unresponsive": "unconscious or unresponsive",
    "breathing": "severe difficulty breathing",
}


class TriageResult(BaseModel):
    """The screen's verdict: ``category`` is a key of :data:`CATEGORIES` when ``red_flag`` is set."""

    model_config = ConfigDict(frozen=True)

    red_flag: bool
    category: str | None = None
    reasons: list[str] = Field(
        default_factory=list, description="What fired, on which text; or, with no flag, what was set aside."
    )


# --- text normalisation ------------------------------------------------------------------------------

_CONTRACTIONS = {
    "cant": "can't", "dont": "don't", "wont": "won't", "doesnt": "doesn't", "didnt": "didn't",
    "isnt": "isn't", "arent": "aren't", "wasnt": "wasn't", "werent": "weren't", "havent": "haven't",
    "hasnt": "hasn't", "hadnt": "hadn't", "couldnt": "couldn't", "wouldnt": "wouldn't", "im": "i'm",
    "ive": "i've", "theyre": "they're", "youre": "you're", "thats": "that's", "whats": "what's",
    "u": "you", "ur": "your", "cannot": "can't",
}  # fmt: skip

# Words the rules depend on: a misspelling one edit away from one of these is read as it.
_LEXICON = (
    "pain", "chest", "breathe", "breathing", "breath", "breathless", "shortness", "sweating", "sweaty",
    "clammy", "seizure", "seizures", "seizing", "convulsing", "convulsion", "convulsions", "unconscious",
    "unresponsive", "conscious", "consciousness", "bleeding", "bleed", "blood", "vomiting", "vomited",
    "vomit", "suicidal", "suicide", "myself", "stroke", "slurred", "slurring", "speech", "drooping",
    "droopy", "weakness", "numbness", "confused", "confusion", "sudden", "suddenly", "fever", "feverish",
    "temperature", "stiff", "headache", "swelling", "swollen", "throat", "tongue", "pregnant",
    "pregnancy", "overdose", "overdosed", "poison", "poisoning", "poisoned", "tablets", "pills",
    "swallowed", "newborn", "months", "weeks", "stool", "stools", "tarry", "anaphylaxis", "allergic",
    "crushing", "pressure", "tightness", "collapsed", "worst", "meningitis", "sepsis", "shivering",
    "concussion", "knocked", "stopping", "vision", "heavily", "excruciating", "unbearable", "dizzy",
    "hemorrhage", "choking", "gasping", "paracetamol", "ibuprofen", "tylenol", "spurting", "gushing",
    "pouring", "sneezing", "wheezing", "tingling", "drooping", "seizing", "convulsing", "unconscious",
)  # fmt: skip
_LEXICON_SET = frozenset(_LEXICON)


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


@lru_cache(maxsize=4096)
def _correct(word: str) -> str:
    if word in _CONTRACTIONS:
        return _CONTRACTIONS[word]
    if len(word) < 4 or word in _LEXICON_SET or embeddings.known_word(word):
        return word
    limit = 1 if len(word) < 9 else 2
    best, best_distance = word, limit + 1
    for candidate in _LEXICON:  # fixed order: ties resolve the same way every time
        if candidate[0] != word[0]:
            continue  # first letters are rarely mistyped; this keeps "sneezing" from becoming "seizing"
        distance = _edit_distance(word, candidate, limit)
        if distance < best_distance:
            best, best_distance = candidate, distance
    return best


# Chinese adverbs that sit between the parts of a phrase ("嘴唇都紫了", "怎么叫都不醒") and carry no
# clinical meaning: dropped before matching so the patterns need not allow for each of them.
_ZH_FILLER = re.compile(r"(?<=[\u4e00-\u9fff])(?:都|也|还|就|又|却|已经|真的|简直|一下子)(?=[\u4e00-\u9fff])")


def normalise(text: str) -> str:
    """NFKC, lower case, straight apostrophes, common misspellings and dropped apostrophes repaired."""
    text = unicodedata.normalize("NFKC", text).lower()
    text = re.sub(r"[\u2018\u2019\u02bc`´]", "'", text)
    text = re.sub(r"[a-z]+", lambda m: _correct(m.group(0)), text)
    text = _ZH_FILLER.sub("", text)
    return re.sub(r"[ \t]+", " ", text).strip()


# --- clauses -------------------------------------------------------------------------------------------

_SENTENCE_SPLIT = re.compile(r"(?<!\d)\.(?!\d)|[!?;:\n。！？；：…]+|\s+-+\s+|\s*—+\s*")
_CLAUSE_SPLIT = re.compile(
    r",?\s+\b(?:but|however|although|though|except|whereas)\b|\s+\band\s+(?=now\b)"
    r"|,\s*(?=(?:and\s+|then\s+)?(?:now|i|i'm|i've|i'd|my|he|he's|his|she|she's|her|they|they're|their|we|it"
    r"|it's|this|the|suddenly|today|tonight)\b)|[，、]?(?:但是|(?<!不)但|可是|然而)|，|(?<=[\u4e00-\u9fff]),"
    r"|,(?=\s*[\u4e00-\u9fff])"
)


def sentences(text: str) -> list[list[str]]:
    """Split normalised text into sentences of clauses: a negation's scope ends at its clause, a time
    marker's ("years ago", "去年") at its sentence unless a clause brings its own ("now", "现在")."""
    result = []
    for sentence in _SENTENCE_SPLIT.split(text):
        parts = [c.strip(" ,、") for c in _CLAUSE_SPLIT.split(sentence)]
        if any(parts):
            result.append([c for c in parts if c])
    return result


def clauses(text: str) -> list[str]:
    return [clause for sentence in sentences(text) for clause in sentence]


# --- numbers ------------------------------------------------------------------------------------------

_EN_NUMBERS = {
    "a": 1, "an": 1, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7,
    "eight": 8, "nine": 9, "ten": 10, "eleven": 11, "twelve": 12, "fifteen": 15, "twenty": 20,
    "thirty": 30, "forty": 40, "few": 3, "couple": 2, "several": 5,
}  # fmt: skip
_ZH_DIGITS = {c: i for i, c in enumerate("零一二三四五六七八九")} | {"两": 2}
_EN_NUMBER = r"\d+(?:\.\d+)?|" + "|".join(sorted(_EN_NUMBERS, key=len, reverse=True))
_ZH_NUMBER = r"\d+|[零一二两三四五六七八九十几半]+|好几|十几"


def _number(token: str) -> float | None:
    token = token.strip()
    if re.fullmatch(r"\d+(?:\.\d+)?", token):
        return float(token)
    if token in _EN_NUMBERS:
        return float(_EN_NUMBERS[token])
    if token in ("几", "好几"):
        return 3.0 if token == "几" else 5.0
    if token == "半":
        return 0.5
    if token and all(c in _ZH_DIGITS or c in "十几" for c in token):
        if "十" in token:
            tens, _, ones = token.partition("十")
            value = (_ZH_DIGITS.get(tens, 1) if tens else 1) * 10
            return float(value + (_ZH_DIGITS.get(ones, 0) if ones and ones != "几" else 0))
        # "六七分钟" (six or seven minutes): a range; the lower bound is the cautious reading.
        return float(min(_ZH_DIGITS[c] for c in token if c in _ZH_DIGITS)) if token.strip("几") else 3.0
    return None


# --- concepts -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Concept:
    """A clinical finding found by regex; ``accept`` vets a match (ages, temperatures), ``unless``
    drops matches in a clause that explains them away (a blocked nose, food poisoning)."""

    name: str
    label: str
    pattern: re.Pattern[str]
    accept: Callable[[re.Match[str]], bool] | None = None
    unless: re.Pattern[str] | None = None


def _rx(*alternatives: str) -> re.Pattern[str]:
    return re.compile("|".join(f"(?:{a})" for a in alternatives))


_POSS = r"(?:my|his|her|their|the|your|our)"
_SELF = r"(?:my\s?self|him\s?self|her\s?self|them\s?sel(?:f|ves)|your\s?self)\b"


def _fever_ok_any(match: re.Match[str]) -> bool:
    groups = match.groupdict()
    value = groups.get("temp") or groups.get("temp2") or groups.get("temp3")
    if value is None:
        text = match.group(0)
        digits = re.search(r"\d{2}(?:\.\d)?", text)
        if digits and ("度" in text or "℃" in text or "体温" in text):
            return 38.0 <= float(digits.group(0)) <= 43.5
        return True
    degrees = float(value)
    return 38.0 <= degrees <= 43.5 or 100.4 <= degrees <= 110.0


def _young_infant_any(match: re.Match[str]) -> bool:
    groups = match.groupdict()
    for suffix in ("", "2", "3", "4", "5", "6"):
        n_key, unit_key = f"n{suffix}", f"unit{suffix}"
        if groups.get(n_key) is not None:
            amount = _number(groups[n_key])
            if amount is None:
                return False
            unit = groups[unit_key]
            if unit.startswith(("day", "天")):
                return amount / 30.4 < 3.0
            if unit.startswith(("week", "wk", "周", "星期", "个星期")):
                return amount / 4.35 < 3.0
            return amount < 3.0
    return True


# fmt: off
_CONCEPTS: tuple[Concept, ...] = (
    # cardiac
    Concept("chest_pain", "chest pain", _rx(
        r"\bchest(?:\s+[\w']+){0,2}?\s+(?:pains?|ache|aching|hurts?|hurting|tight(?:ness)?|pressure|heavy"
        r"|heaviness|discomfort|squeez\w*|crush\w*|burning|pounding|is\s+killing)",
        r"\b(?:pain|ache|pressure|tightness|heaviness|squeezing|crushing|heavy|tight|burning|sharp"
        r"|stabbing)\s+(?:\w+\s+)?(?:feeling\s+|sensation\s+)?(?:in|on|across"
        r"|over)\s+(?:the\s+(?:middle|centre|center)\s+of\s+)?"
        + _POSS + r"\s+chest",
        r"\b(?:elephant|weight)\s+(?:\w+\s+)?on\s+" + _POSS + r"\s+chest",
        r"\b(?:standing|sitting|pressing|pushing|crushing|squeezing)\s+(?:down\s+)?on\s+" + _POSS
        + r"\s+chest",
        r"\b(?:grabbing|clutching|holding|gripping)\s+(?:at\s+)?" + _POSS + r"\s+chest\b",
        r"\bchest\s+(?:is|feels)\s+on\s+fire\b",
        r"\bangina\b",
        r"胸痛|(?:胸口|心口|心前区|胸部)[^不没无未，。\s]{0,3}?(?:绞痛|剧痛|刺痛|痛|疼|闷|压|紧|憋)|胸闷"
        r"|胸部(?:剧烈)?(?:疼痛|痛|疼|压迫|压榨)|心绞痛|胸前区?(?:痛|疼)|压榨(?:样|性)(?:胸)?痛"
        r"|(?:心脏|胸口|胸部|心口)(?:好像|像)?(?:被)?(?:压住|压着|揪着|攥住|勒住|堵住)",
    )),
    Concept("severe_chest_pain", "severe chest pain", _rx(
        r"\b(?:crushing|severe|excruciating|unbearable|worst|intense|terrible|extreme|massive|horrible"
        r"|agoni\w+)\s+(?:\w+\s+)?chest\s+(?:pain|pressure|tightness)",
        r"\bchest\s+(?:pain\s+)?(?:is|feels)\s+(?:\w+\s+)?(?:crushing|crushed|unbearable|excruciating)",
        r"\b(?:crushing|squeezing)\s+(?:pain|pressure|feeling)\s+(?:in|on)\s+" + _POSS + r"\s+chest",
        r"胸(?:口|部)?(?:疼|痛)得(?:很|特别|非常)?(?:厉害|受不了)|剧烈(?:的)?胸痛"
        r"|胸(?:口|部)?(?:剧痛|剧烈(?:疼痛|痛|疼)|压榨样(?:疼痛|痛|疼)|撕裂样(?:疼痛|痛|疼))"
        r"|胸口像(?:被)?(?:压|石头)",
    )),
    Concept("heart_attack", "heart attack", _rx(
        r"\b(?:having|had just had|is having|just had)\s+a\s+heart\s+attack",
        r"\bheart\s+attack\s+(?:right\s+)?now\b",
        r"\bcardiac\s+arrest\b",
        r"心梗|心肌梗[死塞]|心脏病(?:犯了|发作)",
    )),
    Concept("dyspnea", "shortness of breath", _rx(
        r"\bshort(?:ness)?\s+of\s+breath\b|\bsob\b|\bbreathless\w*|\bout\s+of\s+breath\b",
        r"\b(?:hard|difficult|difficulty|trouble|struggling|struggle|problems?)\s+(?:to\s+|with\s+"
        r"|in\s+)?breath(?:e|ing)?\b",
        r"\bcan't\s+(?:catch|get)\s+" + _POSS + r"\s+breath\b|\blabou?red\s+breathing\b|\bwinded\b",
        r"\bbreathing\s+(?:is\s+)?(?:hard|difficult|fast|rapid|heavy|laboured|labored)\b|\bwheez\w+",
        r"呼吸困难|气短|气促|气急|喘不(?:上|过)气|透不过气|上不来气|憋气|喘(?:得)?(?:很|特别)?厉害|呼吸急促"
        r"|憋得慌",
    )),
    Concept("severe_dyspnea", "severe difficulty breathing", _rx(
        r"\bcan't\s+breath(?:e|ing)?\b|\bunable\s+to\s+breathe\b|\bnot\s+able\s+to\s+breathe\b",
        r"\bcan\s+(?:barely|hardly)\s+breathe\b|\bstruggling\s+(?:to|for)\s+(?:breathe|breath|air)\b",
        r"\bgasping\b|\bchoking\b|\bsuffocat\w+",
        r"\b(?:lips|face|fingers?|fingernails|skin)\s+(?:is\s+|are\s+)?(?:turning\s+|going\s+)?(?:blue"
        r"|purple|grey|gray)\b",
        r"\bturning\s+blue\b",
        r"\b(?:not|isn't|is not|stop|stopped|stops|stopping|no longer|aren't|wasn't)\s+breathing\b",
        r"\bcan't\s+(?:get|take)\s+(?:any\s+|enough\s+|a\s+)?(?:air|breath)\b",
        r"\bsevere(?:ly)?\s+short(?:ness)?\s+of\s+breath\b"
        r"|\bcan't\s+(?:talk|speak)\s+in\s+full\s+sentences\b",
        r"\binhaler\s+(?:is\s+)?(?:not|isn't|doesn't|does\s+not)\s+(?:working|helping|work|help)\b"
        r"|\binhaler\s+(?:does|did|is\s+doing)\s+nothing\b",
        r"\bsucking\s+in\s+(?:under|between|around)\s+(?:his|her|the)\s+ribs\b"
        r"|\bribs\s+(?:are\s+)?sucking\s+in\b|\bnostrils\s+(?:are\s+)?flaring\b"
        r"|\bgrunting\s+(?:with|when|as)\s+(?:he|she)\s+breathes\b",
        r"无法呼吸|不能呼吸|呼吸不了|喘不了气|窒息"
        r"|(?:憋得|嘴唇|嘴|脸色?|指甲)\S?(?:发紫|发青|青紫|发乌|紫了|青了)"
        r"|没(?:有)?(?:了)?呼吸(?!困难|急促|不畅|道)|不(?:会)?呼吸了"
        r"|呼吸(?:停止|骤停|非常困难|极度困难|越来越困难)|严重(?:的)?呼吸困难|憋死|快喘不上气|噎住"
        r"|卡(?:在|住)(?:了)?(?:喉咙|气管|嗓子)|被\S{0,4}卡住",
    ), unless=_rx(r"\bthrough\s+" + _POSS + r"\s+nose\b|\bstuffy\b|\bblocked\s+nose\b|\bcongest\w*",
                  "鼻塞|鼻子")),
    Concept("speech_limited", "too breathless to talk", _rx(
        r"\bcan't\s+(?:speak|talk|say)\s+more\s+than\s+(?:a\s+few|\w+)\s+words\b"
        r"|\bcan\s+(?:hardly|barely)\s+(?:talk|speak)\b"
        r"|\bcan't\s+(?:talk|speak)\s+(?:in\s+full\s+sentences|properly)\b",
        r"说不了(?:完整的)?话|话都说不(?:出来|完整)",
    )),
    Concept("sweating", "sweating", _rx(
        r"\bsweat(?:ing|y|s)?\b|\bcold\s+sweats?\b|\bclammy\b|\bdiaphore\w+|\bdrenched\b",
        r"[出冒][^不没，。]{0,3}汗|(?:全|都|满)是汗|满头大?汗|一身\S?汗|大汗|冷汗|虚汗|汗(?:流|湿|如雨)",
    )),
    Concept("radiating_pain", "pain spreading to the arm or jaw", _rx(
        r"\b(?:spread\w*|radiat\w*|shoot\w*|going|goes|moving|moves|travel\w*)\s+(?:down|to|into|up)\s+(?:"
        + _POSS + r"\s+)?(?:left\s+)?(?:arm|jaw|neck|shoulder|back)",
        r"\bleft\s+arm\s+(?:pain|hurts|aches|is\s+numb|numbness|tingl\w+)"
        r"|\b(?:jaw|left\s+arm)\s+(?:pain|hurts|aches)\b",
        r"(?:放射|牵扯|疼|痛)(?:到|至|向)\S{0,2}(?:手臂|胳膊|肩|下巴|后背|背|脖子)"
        r"|放射(?:到|至)?(?:左)?(?:手臂|胳膊|肩|下巴|后背)|左(?:手臂|胳膊|肩膀?)\S{0,2}(?:疼|痛|麻)"
        r"|牵扯到?(?:左)?(?:胳膊|下巴)",
    )),
    # stroke
    Concept("face_droop", "face drooping", _rx(
        r"\b(?:face|smile|mouth|lip)\b(?:\s+[\w']+){0,3}\s+(?:droop\w*|sag\w*|lopsided|crooked|uneven"
        r"|drop\w*|slack|paraly[sz]\w*|twisted|numb|frozen|fallen|not\s+moving)\b",
        r"\b(?:droop\w*|sagg\w*|lopsided|crooked|uneven)\s+(?:face|smile|mouth)\b|\bfacial\s+droop\w*",
        r"\bone\s+side\s+of\s+" + _POSS + r"\s+(?:face|mouth)\b(?:\s+[\w']+){0,3}\s+(?:droop\w*|numb|sag\w*"
        r"|drop\w*|weak|paraly[sz]\w*|not\s+moving)",
        r"口角歪斜|嘴(?:巴|角)?\S?(?:歪|斜)"
        r"|(?:脸|面部|半边脸|一边脸|一侧脸)(?:突然)?(?:歪|下垂|麻木|不对称|耷拉)",
    )),
    Concept("one_sided_weakness", "weakness on one side", _rx(
        r"\b(?:one|left|right)\s+(?:arm|leg|side|hand)(?:\s+and\s+(?:arm|leg|hand))?\s+(?:is\s+|feels\s+"
        r"|went\s+|has\s+gone\s+|suddenly\s+|just\s+)*(?:weak|numb|limp|heavy|dead|paraly[sz]\w*|useless)",
        r"\b(?:weak(?:ness)?|numb(?:ness)?|paralysis)\s+(?:in|on|of)\s+" + _POSS
        + r"\s+(?:left|right|one)\s+(?:arm|leg|side|hand)",
        r"\bcan't\s+(?:lift|raise|move|feel)\s+(?:" + _POSS
        + r"|one|either)\s+(?:(?:left|right)\s+)?(?:arm|leg|hand)",
        r"\b(?:arm|leg|hand)\s+(?:suddenly|all\s+of\s+a\s+sudden)\s+(?:went|is|feels|became|got)\s+(?:weak"
        r"|numb|limp|dead)",
        r"\bsudden(?:ly)?\s+(?:weak\w*|numb\w*)\s+(?:in|of)\s+" + _POSS + r"\s+(?:arm|leg|face|hand)",
        r"\b(?:arm|hand)\s+(?:just\s+)?(?:dropped|fell|flopped)\s+(?:limp|down)\b|\bone-sided\s+weakness\b"
        r"|\bweak\s+on\s+one\s+side\b",
        r"\bhemipleg\w+",
        r"半身不遂|偏瘫"
        r"|(?:一侧|半边|半身|左侧|右侧|一边|左边|右边|左|右)\S{0,2}?(?:身体|肢体|手臂|胳膊|手脚|手|脚"
        r"|腿)\S{0,2}?(?:无力|麻木|发麻|没劲|没有?力气|动不了|抬不起来?|不听使唤)"
        r"|(?:手臂|胳膊)(?:突然)?(?:抬不起来|动不了|没有?力气)|突然(?:手臂|胳膊|手|腿)(?:无力|发麻|麻木)",
    )),
    Concept("slurred_speech", "slurred speech", _rx(
        r"\bslurr\w+",
        r"\bspeech\s+(?:is\s+|was\s+|sounds\s+|became\s+|got\s+)?(?:slurred|garbled|jumbled|weird|strange"
        r"|unclear|not\s+making\s+sense)",
        r"\b(?:can't|unable\s+to|trouble|difficulty|struggling\s+to|hard\s+to)\s+(?:speak|speaking|talk"
        r"|talking|get\s+(?:the\s+|" + _POSS + r"\s+)?words\s+out"
        r"|find\s+(?:the\s+|" + _POSS + r"\s+)?words)(?!\s+more\s+than|\s+in\s+full)",
        r"\bwords\s+(?:are\s+|were\s+)?(?:coming\s+out\s+)?(?:all\s+)?(?:wrong|jumbled|garbled|mixed\s+up"
        r"|muddled)",
        r"\btalking\s+(?:gibberish|nonsense)\b|\baphasi\w+",
        r"\bcan't\s+understand\s+(?:what\s+(?:people|anyone|we|you|i)\s+(?:are|is|am)\s+saying|speech"
        r"|words)\b",
        r"说话\S{0,3}?(?:含糊|不清|不利索|大舌头|费劲|结巴)|(?:口齿|言语|吐字)\S{0,2}不清|说不出话|讲不出话"
        r"|大舌头|(?:突然)?不会说话|语无伦次|听不懂(?:别人|人)?(?:说话|讲话)",
    ), unless=_rx(r"\b(?:french|english|spanish|language|chinese|german|chok\w+)\b|卡住|噎")),
    Concept("sudden_confusion", "sudden confusion", _rx(
        r"\b(?:sudden(?:ly)?|all\s+of\s+a\s+sudden|out\s+of\s+nowhere)\b(?:\s+[\w']+){0,3}\s+(?:confus\w*"
        r"|disoriented|doesn't\s+(?:know|recogni[sz]e))",
        r"\b(?:confus\w*|disoriented)\s+(?:all\s+of\s+a\s+sudden|suddenly|out\s+of\s+nowhere)",
        r"突然(?:\S{0,3})(?:糊涂|意识混乱|神志不清|不认识人|认不出)",
    )),
    Concept("sudden_vision_loss", "sudden loss of vision", _rx(
        r"\b(?:sudden(?:ly)?|all\s+of\s+a\s+sudden)\b(?:\s+[\w']+){0,3}\s+(?:lost|loss\s+of|losing"
        r"|can't\s+see|blind|double\s+vision|went\s+blind)",
        r"\b(?:lost|losing)\s+(?:the\s+)?(?:vision|sight)\s+(?:in|out\s+of)\s+(?:one|" + _POSS
        + r"|both)\s+eyes?",
        r"\bwent\s+blind\b|\b(?:vision|sight)\s+(?:suddenly\s+)?(?:went|gone|going)\s+(?:black|dark)",
        r"\bcurtain\s+(?:\w+\s+){0,2}over\s+" + _POSS + r"\s+(?:eye|vision)",
        r"突然(?:\S{0,3})(?:看不见|看不清|失明|视力(?:下降|模糊|丧失)|眼前发黑|重影)"
        r"|一只眼(?:睛)?(?:突然)?看不见",
    )),
    Concept("stroke_now", "stroke", _rx(
        r"\b(?:having|had\s+just\s+had|just\s+had|is\s+having|might\s+be\s+having"
        r"|may\s+be\s+having)\s+a\s+(?:stroke|tia|mini[-\s]stroke)\b",
        r"\bstroke\s+(?:right\s+)?now\b",
        r"中风了|(?:正在|好像|可能|是不是|怀疑)(?:是)?(?:中风|脑梗|卒中|脑出血)|脑梗了|脑出血了",
    )),
    # mental health
    Concept("suicidal", "suicidal thoughts or self-harm", _rx(
        r"\bkill(?:ing)?\s+" + _SELF + r"|\bsuicid\w+|\bend(?:ing)?\s+(?:my|it)\s+(?:own\s+)?(?:life|all)\b",
        r"\bend\s+it\s+all\b|\btake\s+my\s+(?:own\s+)?life\b|\bwant(?:s|ed|ing)?\s+to\s+die\b"
        r"|\bwanna\s+die\b",
        r"\bwish\s+(?:i\s+was|i\s+were|to\s+be)\s+dead\b|\bbetter\s+off\s+dead\b",
        r"\b(?:don't|do\s+not)\s+want\s+to\s+(?:live|be\s+alive|be\s+here|exist|wake\s+up)\b",
        r"\bno\s+(?:reason|point)\s+(?:in\s+|to\s+)?(?:living|live|go\s+on|going\s+on)\b",
        r"\b(?:harm|hurting|harming|cutting|burning|hang|hanging|starving)\s+" + _SELF
        + r"|\b(?:hurt|cut|burn|stab)\s+" + _SELF
        + r"\s+(?:on\s+purpose|deliberately|intentionally|again)\b"
        r"|\b(?:want|wants|going|planning|trying|tried|thinking\s+(?:about|of)|urge)\s+(?:to\s+)?(?:hurt"
        r"|harm|cut|burn|stab|hurting|cutting)\s+"
        + _SELF + r"|\bself[-\s]?harm\w*",
        r"\b(?:planning|plan|going|want|wanna|decided)\s+to\s+(?:end\s+it|overdose|od)\b"
        r"|\blife\s+is\s+(?:pointless|meaningless|not\s+worth\s+living)\b",
        r"\b(?:nobody|no\s+one)\s+would\s+(?:miss|care\s+about)\s+me\b|\bbetter\s+off\s+without\s+me\b"
        r"|\b(?:saving|stockpiling|hoarding)\s+(?:up\s+)?(?:my\s+)?(?:pills|tablets|meds)\b",
        r"\bjump(?:ing)?\s+(?:off|from|in\s+front\s+of)\s+(?:a|the)\s+(?:bridge|roof|building|train|cliff)\b"
        r"|\bcan't\s+go\s+on\b",
        r"\b(?:rope|noose)\b.{0,20}\bready\b|\b(?:tied|made|have)\s+a\s+noose\b"
        r"|\b(?:wrote|written|writing)\s+(?:a\s+|my\s+)?(?:suicide|goodbye)\s+(?:note|letters?)\b",
        r"(?:划|割|刺|砍)\S{0,2}(?:自己|手腕)|上吊|遗书|自杀|想死|不想活|活不下去|活着没(?:有)?(?:意思|意义)"
        r"|轻生|结束(?:自己的?)?生命|割腕|自残|伤害自己|跳楼|寻死|了结自己|一了百了",
    )),
    # allergy
    Concept("anaphylaxis", "anaphylaxis", _rx(r"\banaphyla\w+|\bepi[-\s]?pen\b", r"过敏性休克|严重过敏")),
    Concept("throat_swelling", "throat or tongue swelling", _rx(
        r"\b(?:throat|tongue)\b(?:\s+(?!bit\b)[\w']+){0,4}\s+(?:swell\w*|swollen|closing|tight\w*|puff\w*"
        r"|blow\w*\s+up|thick\w*|huge)",
        r"\bswell\w*\s+(?:of|in)\s+" + _POSS + r"\s+(?:throat|tongue)\b",
        r"(?:喉咙|嗓子|舌头)[^不没，。]{0,2}?(?:肿|发紧|紧|堵|水肿)",
    )),
    Concept("face_swelling", "lip or face swelling", _rx(
        r"\b(?:lips?|face|eyes?|mouth)\b(?:\s+[\w']+){0,2}\s+(?:swell\w*|swollen|puff\w*|blow\w*\s+up|huge)",
        r"(?:嘴唇|嘴巴|脸|眼睛|眼皮|面部)[^不没，。]{0,3}?肿",
    )),
    Concept("allergen_exposure", "allergen exposure", _rx(
        r"\ballergic\s+reaction\b|\b(?:stung|sting|bitten)\b"
        r"|\bafter\s+(?:eating|taking|(?:a|the)\s+(?:bee|wasp|sting|injection|shot|jab|infusion))\b"
        r"|\b(?:ate|eaten)\b(?:\s+[\w']+){0,3}\s+(?:peanuts?|nuts?|shellfish|shrimp|prawns?|seafood|crab"
        r"|lobster|sesame|eggs?)",
        r"\b(?:peanuts?|shellfish|shrimp|bee|wasp|hornet|penicillin|amoxicillin|antibiotic)\b",
        r"(?:打针|输液|吃药|用药|注射|蛰|咬)\S{0,3}(?:后|之后|以后)\S{0,2}过敏|过敏了|过敏反应"
        r"|被.{0,3}(?:蛰|叮|咬)|蛰了|吃了.{0,6}(?:花生|坚果|海鲜|虾|蟹)|吃(?:了|完)\S{0,6}(?:后|以后|之后)"
        r"|(?:打|吃)了.{0,4}(?:青霉素|头孢|抗生素)",
    )),
    Concept("faint", "feeling faint", _rx(
        r"\bfeel(?:s|ing)?\s+(?:like\s+)?(?:i'm\s+|i\s+am\s+|he's\s+"
        r"|she's\s+)?(?:going\s+to\s+)?(?:pass(?:ing)?\s+out|faint\w*)\b|\blight-?headed\b|\bdizzy\b",
        r"头晕|要晕倒|快晕了|眼前发黑",
    )),
    Concept("hives", "hives", _rx(
        r"\bhives\b|\bwelts\b|\brash\s+all\s+over\b", r"荨麻疹|风团|全身(?:起)?(?:疹子|红疹|包)"
    )),
    # bleeding
    Concept("heavy_bleeding", "uncontrolled bleeding", _rx(
        r"\b(?:stabbed|been\s+shot|gunshot|gun\s+shot)\b"
        r"|\bcough\w*\s+up\s+(?:a\s+lot\s+of|lots\s+of|so\s+much)\s+blood\b",
        r"\b(?:nose\s?)?bleed\w*(?:[\s,]+[\w']+){0,5}[\s,]+(?:won't|will\s+not|doesn't|does\s+not|can't"
        r"|isn't|is\s+not|not|hasn't|has\s+not)\s+(?:stop\w*|slow\w*)",
        r"\b(?:can't|unable\s+to|couldn't|won't)\s+(?:stop|control)\s+(?:the\s+|" + _POSS + r"\s+)?bleed\w*",
        r"\bbleed\w*\s+(?:so\s+|really\s+|very\s+)?(?:heavily|badly|profusely|a\s+lot|like\s+crazy"
        r"|everywhere|nonstop|non-stop|uncontrollabl\w*|out)\b",
        r"\b(?:heavy|severe|massive|uncontrolled|uncontrollable|profuse|major)\s+(?:bleeding|blood\s+loss)\b",
        r"\b(?:blood|it)\s+(?:is\s+|keeps\s+)?(?:spurt\w*|gush\w*|pour\w*|pumping|squirt\w*)",
        r"\bsoak\w*\s+through\b|\b(?:lost|losing)\s+a\s+lot\s+of\s+blood\b|\bpool\s+of\s+blood\b"
        r"|\bblood\s+everywhere\b",
        r"血流不止|止不住血|血止不住|(?:出血|流血)(?:不止|止不住|很多|很厉害|好多|不停)|大(?:量)?出血"
        r"|大量流血|喷血|血(?:一直|不停地?)(?:流|冒|喷)|血(?:喷|涌)出来"
        r"|流了(?:很多|好多|一大滩|一地)(?:的)?血",
    ), unless=_rx(r"\bgums?\b|\bperiod\b|牙龈|月经")),
    Concept("gi_bleeding", "vomiting blood or black stools", _rx(
        r"\b(?:vomit\w*|throw\w*\s+up|threw\s+up|puk\w*|threw)\b(?:\s+[\w']+){0,2}\s+blood\b",
        r"\bblood\b(?:\s+[\w']+){0,5}\s+(?:vomit\w*|threw\s+up|throwing\s+up)\b",
        r"\bblood(?:y)?\s+(?:in\s+" + _POSS + r"\s+)?vomit\b|\bcoffee[-\s]grounds?\b",
        r"\b(?:black|tarry|tar-like|tar\s+like|jet\s+black|sticky\s+black)\s+(?:\w+\s+)?(?:stools?|poop|poo"
        r"|bowel\s+movements?|feces|faeces|diarrh\w+)",
        r"\b(?:stools?|poop|poo)\s+(?:is\s+|are\s+|looks?\s+|has\s+been\s+)?(?:\w+\s+)?(?:black|tarry"
        r"|like\s+tar)\b",
        r"\bmelaena\b|\bmelena\b|\bha?ematemesis\b",
        r"\b(?:lots|a\s+lot|large\s+amounts?)\s+of\s+blood\s+(?:from|in)\s+" + _POSS
        + r"\s+(?:rectum|bottom|stool|poop|bum|butt)",
        r"吐(?!痰)[^痰，。不没]{0,4}?血(?!丝)|呕[^，。不没]{0,3}?血|黑便|柏油(?:样|状)?(?:便|大便)"
        r"|大便(?:是|呈|发|变)?(?:黑色?|柏油)|拉黑|(?:呕吐物|吐的东西)(?:里)?(?:有|带)(?:血|咖啡)"
        r"|咖啡(?:渣|色)(?:样)?|大量便血|便血很多",
    ), unless=_rx(r"\biron\b|\bpepto\b|\bbismuth\b|\bblueberr\w+|铁剂|补铁")),
    # poisoning
    Concept("overdose", "overdose or poisoning", _rx(
        r"\boverdos\w+|\bo\.?d\.?'?d\b",
        r"\b(?:took|taken|swallowed|downed|ate)\b(?:\s+[\w']+){0,3}\s+(?:a\s+bunch|a\s+load|loads"
        r"|a\s+fistful|half\s+(?:a|the)\s+bottle|too\s+many|a\s+(?:whole|full)\s+bottle|an\s+entire\s+bottle"
        r"|all\s+(?:of\s+)?(?:my|his|her|the)|a\s+handful|\d{2,}|twenty|thirty|fifty|lots\s+of|a\s+lot\s+of"
        r"|way\s+too\s+much)",
        r"\b(?:swallowed|drank|drunk|ate|eaten|ingested|drinking)\b(?:\s+[\w']+){0,3}\s+(?:bleach|poison"
        r"|batter(?:y|ies)|magnets?|detergent|laundry\s+pods?|tide\s+pods?|cleaner|cleaning|chemicals?"
        r"|antifreeze|pesticide|weed\s?killer|rat\s+poison|paint\s+thinner|lighter\s+fluid|lamp\s+oil"
        r"|kerosene|gasoline|petrol|wild\s+mushrooms?|bottle\s+of\s+(?:pills|tablets))",
        r"(?<!food\s)\bpoison(?:ed|ing)\b(?!\s+(?:ivy|oak|sumac))",
        r"\b(?:pills|tablets)\b.{0,40}\b(?:vodka|alcohol|booze|whisky|whiskey|wine|beers?)\b"
        r"|\b(?:vodka|alcohol|booze|whisky|whiskey|wine|beers?)\b.{0,40}\b(?:pills|tablets)\b",
        r"\bcarbon\s+monoxide\b"
        r"|\bgot\s+into\s+(?:[\w']+\s+){0,2}(?:medicine|medication|pills?|tablets|cleaning|bleach|chemical)",
        r"\b(?:ate|swallowed|chewed)\s+(?:some|a\s+few|several|a\s+handful\s+of"
        r"|[\w]+'s)\s+(?:of\s+)?(?:[\w']+\s+)?(?:pills|tablets|gummies|edibles)\b",
        r"服药过量|过量服用"
        r"|(?:吃|服|吞|喝)(?:了|下)?(?:一整瓶|一瓶|整瓶|半瓶|一盒|整盒|很多|大量|好多|一大把|一把|一堆|几十"
        r"|\d{2,})(?:片|粒)?(?:的)?\S{0,6}(?:药|片)|吞(?:了|下)\S{0,6}(?:电池|磁铁|药|洗衣凝珠|农药)"
        r"|喝(?:了|下)\S{0,4}(?:农药|百草枯|敌敌畏|漂白剂|消毒液|洗洁精|防冻液|毒药|老鼠药)|(?<!食物)中毒"
        r"|一氧化碳|煤气|误(?:服|食|吃|喝|吞)|毒蘑菇|烧炭|老鼠药|鼠药|毒鼠强|敌敌畏|百草枯",
    ), unless=_rx(r"\bfood\s+poisoning\b|食物中毒")),
    # seizures
    Concept("seizure", "seizure", _rx(
        r"\bseiz\w+|\bconvuls\w+|\bfitting\b|\bhaving\s+a\s+fit\b|\bepileptic\s+(?:attack|fit)\b|\bjerking\b",
        r"\b(?:his|her|my|their|the|a)\s+fits?\b(?!\s+(?:person|body|figure|check))",
        r"抽搐|抽风|癫痫|羊癫疯|惊厥|抽了",
    )),
    Concept("seizure_repeated", "repeated or non-stop seizures", _rx(
        r"\b(?:seiz\w+|convuls\w+|fit|fits|shaking|jerking)\b(?:\s+[\w']+){0,3}\s+(?:won't|will\s+not"
        r"|doesn't|isn't|hasn't|not)\s+stop\w*",
        r"\bstill\s+(?:seizing|shaking|convulsing|fitting|jerking|having\s+(?:a\s+)?seizures?)\b",
        r"\bkeeps?\s+(?:seizing|having\s+(?:seizures|fits)|convulsing)\b|\banother\s+(?:seizure|fit)\b",
        r"\b(?:seiz\w+|fit)\b.{0,40}\banother\s+(?:one|seizure|fit)\b|\bwithout\s+waking\s+up\b",
        r"\b(?:second|third|2nd|3rd)\s+(?:seizure|fit)\b"
        r"|\b(?:seizures|fits)\s+(?:back\s+to\s+back|one\s+after\s+another|in\s+a\s+row)\b",
        r"\bback[-\s]to[-\s]back\s+(?:seizures|fits)\b"
        r"|\b(?:repeated|multiple|several|two|three|2|3)\s+(?:seizures|fits)\b",
        r"\bstatus\s+epilepticus\b|\bnot\s+waking\s+up\s+between\b",
        r"抽搐(?:不止|不停|停不下来)|(?:一直|不停|反复|连续|接连|持续)(?:地)?\S{0,2}(?:抽|发作)"
        r"|又抽(?:了|起来)|一次接一次|一个接一个|接二连三|抽了(?:\d+|[二两三四五六七八九十几]+)次|癫痫持续"
        r"|持续抽搐",
    )),
    # head injury
    Concept("head_injury", "head injury", _rx(
        r"\b(?:hit|hits|bumped|banged|smacked|struck|knocked|whacked|slammed|injured|hurt"
        r"|cracked)\b(?:\s+[\w']+){0,3}\s+head\b",
        r"\bhead\s+(?:injury|trauma|wound|knock|bump|first)\b|\bconcussion\b",
        r"\bfell\b(?:\s+[\w']+){0,4}\s+(?:hit|landed\s+on|onto|on)\b(?:\s+[\w']+){0,2}\s+head\b",
        r"\bknocked\s+(?:out|unconscious)\b",
        r"\b(?:fell|falling|fall)\s+(?:off|from|down)\s+(?:a\s+|the\s+|" + _POSS
        + r"\s+)?(?:ladder|stairs|bike|horse|roof|bed|tree|scooter)",
        r"\b(?:car|motorcycle|motorbike|bike|bicycle)\s+(?:accident|crash)\b",
        r"撞(?:到|了|伤)?(?:了)?头|头(?:部)?(?:被)?(?:撞|磕|砸|摔)(?:到|了|伤|破)?"
        r"|摔(?:到|伤|倒|了)?.{0,4}头|头部(?:受伤|外伤|撞击)|脑震荡|车祸|从.{1,6}(?:摔|掉)下来",
    )),
    Concept("loss_of_consciousness", "loss of consciousness", _rx(
        r"\b(?:passed|passing|pass)\s+out\b|\bknocked\s+(?:out|unconscious)\b|\blost\s+consciousness\b"
        r"|\bloss\s+of\s+consciousness\b",
        r"\bblack(?:ed)?\s+out\b|\bwas\s+out\s+(?:cold|for)\b|\bunconscious\b|\bout\s+cold\b|\bfainted\b",
        r"昏迷|晕(?:了)?过去|晕倒|失去(?:了)?意识|不省人事|昏过去|人事不省|意识丧失",
    )),
    Concept("head_injury_warning", "warning signs after a head injury", _rx(
        r"\b(?:keeps|repeatedly|kept|won't\s+stop)\s+(?:vomit\w*|throwing\s+up|being\s+sick)\b",
        r"\bvomited\s+(?:twice|three\s+times|several\s+times|repeatedly|multiple\s+times)\b",
        r"\b(?:very\s+)?(?:confused|drowsy|can't\s+stay\s+awake|unequal\s+pupils)\b"
        r"|\b(?:not|isn't)\s+making\s+sense\b|\bone\s+pupil\s+(?:is\s+)?(?:bigger|larger)\b",
        r"\bclear\s+fluid\s+(?:from|out\s+of)\s+" + _POSS + r"\s+(?:nose|ears?)\b",
        r"(?:反复|不停|一直|多次)(?:地)?(?:呕吐|吐)|嗜睡|(?:意识|神志)(?:模糊|不清)"
        r"|瞳孔(?:不一样大|大小不一)|(?:耳朵|鼻子)(?:流|出)(?:清)?(?:水|液体)",
    )),
    # headache, meningitis
    Concept("thunderclap", "sudden severe headache", _rx(
        r"\bworst\s+(?:\w+\s+){0,2}head\s?ache\b(?!s)",
        r"\bworst\s+(?:head\s+)?pain\s+(?:of|in)\s+" + _POSS + r"\s+li(?:fe|ves)\b",
        r"\bthunderclap\b",
        r"\b(?:sudden(?:ly)?|out\s+of\s+nowhere|all\s+of\s+a\s+sudden|instantly|within\s+seconds"
        r"|in\s+seconds|abrupt(?:ly)?)\b(?:\s+[\w',]+){0,4}?\s+(?:severe|excruciating|explosive|exploding"
        r"|blinding|splitting|agoni\w+|intense|terrible|horrible|violent|unbearable"
        r"|crushing)\s+(?:[\w']+\s+){0,2}?head\s?ache",
        r"\b(?:severe|excruciating|explosive|exploding|blinding|splitting|agoni\w+|intense"
        r"|unbearable)\s+(?:[\w']+\s+){0,2}?head\s?ache\b(?:\s+[\w',]+){0,5}?\s+(?:sudden(?:ly)?"
        r"|out\s+of\s+nowhere|all\s+at\s+once|in\s+seconds|instantly)\b",
        r"\blike\s+(?:being|getting)\s+(?:hit|struck|kicked)\s+(?:on|in|over)\s+the\s+head\b",
        r"\bhead\s+(?:feels\s+like\s+it's|is|was|had)\s+(?:exploding|exploded|going\s+to\s+explode"
        r"|about\s+to\s+explode)\b|\b(?:my|his|her)\s+head\s+exploded\b",
        r"\bnever\s+had\s+a\s+head\s?ache\s+(?:like\s+this|this\s+bad)\b",
        r"(?:一生中|这辈子|有生以来)最(?:剧烈|严重|厉害|痛|疼)的头(?:痛|疼)"
        r"|突然\S{0,4}?(?:剧烈|炸裂[样般]?|爆炸[样般]?|撕裂样|难以忍受|严重)\S{0,3}?头(?:痛|疼)|雷击样头痛"
        r"|(?:像|好像)(?:被)?(?:雷劈|锤子砸|重击).{0,4}头|从来没有?(?:这么|这样)(?:痛|疼)过的头"
        r"|头(?:痛|疼)欲裂.{0,6}突然|突然.{0,4}头(?:痛|疼)欲裂",
    )),
    Concept("worst_ever", "worst pain ever", _rx(
        r"\bworst\s+(?:pain\s+)?(?:ever|of\s+my\s+life|i've\s+ever\s+(?:had|felt))\b"
        r"|\bnever\s+(?:had|felt)\s+(?:pain|anything)\s+like\s+(?:this|it)\b",
        r"(?:这辈子|一生中|有生以来|从来没有?)\S{0,4}?最?(?:疼|痛|严重|厉害)|最(?:疼|痛)的一次"
        r"|头(?:痛|疼)\S{0,4}(?:炸开|炸裂|爆炸|裂开|要炸)",
    )),
    Concept("headache", "headache", _rx(r"\bhead\s?aches?\b|\bhead\s+(?:hurts|is\s+pounding)\b", "头[痛疼]")),
    Concept("stiff_neck", "stiff neck", _rx(
        r"\bstiff\s+neck\b|\bneck\s+(?:is\s+|feels\s+)?(?:\w+\s+)?(?:stiff|rigid)\b|\bneck\s+stiffness\b",
        r"\bcan't\s+(?:bend|move|turn)\s+" + _POSS + r"\s+neck\b"
        r"|\bcan't\s+(?:bend|touch|move|put)\s+" + _POSS + r"\s+(?:chin|head)\s+(?:to|forward|down)",
        r"脖子(?:发)?(?:僵|硬|僵硬)|颈(?:部|项)?(?:僵硬|强直|发硬)|脖子(?:不能|没法|无法)(?:弯|低头)"
        r"|低不了头",
    )),
    Concept("non_blanching_rash", "rash that does not fade", _rx(
        r"\brash\b(?:\s+[\w']+){0,3}\s+(?:doesn't|does\s+not|won't|didn't|not)\s+(?:fade|disappear|go\s+away"
        r"|blanch)\b",
        r"\bnon[-\s]?blanching\b|\bpurple\s+(?:spots|rash|blotches)\b|\bpetechia\w*|\bpurpura\b",
        r"(?:皮疹|疹子)(?:压|按)(?:之)?不(?:褪|退)|(?:压|按)(?:了)?(?:也)?不(?:褪|退)色"
        r"|紫(?:色)?(?:斑|点|癜)|出血点",
    )),
    Concept("photophobia", "light sensitivity", _rx(
        r"\b(?:light|lights|brightness)\s+(?:hurts?|is\s+painful|bothers?|kills?)\s+" + _POSS + r"\s+eyes\b",
        r"\blights?\s+(?:are|is)\s+(?:unbearable|too\s+bright|painful|hurting)\b"
        r"|\bsensitiv\w+\s+to\s+(?:the\s+)?light\b|\bphotophobia\b"
        r"|\bcan't\s+(?:stand|tolerate|look\s+at)\s+(?:the\s+)?light\b",
        r"怕光|畏光|见光(?:就)?(?:头痛|难受)",
    )),
    # infection, sepsis
    Concept("fever", "fever", _rx(
        r"\b(?:fever\w*|febrile|pyrexi\w+|burning\s+up|high\s+temp\w*)\b",
        r"\b(?:temp(?:erature)?|thermometer|reading)\D{0,15}?(?P<temp>\d{2,3}(?:\.\d+)?)",
        r"(?P<temp3>\d{2,3}(?:\.\d+)?)\s*(?:on\s+the\s+thermometer|temp(?:erature)?)\b",
        r"\b(?:feels?|feeling|is|are)\s+(?:very\s+|really\s+|so\s+)?hot\b(?!\s+(?:outside|today|in\s+here))"
        r"|\bhot\s+to\s+(?:the\s+)?touch\b",
        r"(?P<temp2>\d{2,3}(?:\.\d+)?)\s*(?:°|degrees?|deg)\s*(?:c|f|celsius|fahrenheit)?\b",
        r"发烧|发热|高烧|低烧|烧到|高热|体温\D{0,6}\d{2}",
        r"\d{2}(?:\.\d)?\s*(?:度|℃)",
    ), accept=_fever_ok_any),
    Concept("infection", "infection", _rx(
        r"\binfect\w+|\bchills\b|\brigors\b|\bshaking\s+chills\b|\bpneumonia\b|\bcellulitis\b|\buti\b"
        r"|\bpus\b",
        r"感染|发炎|寒战|打寒战|肺炎|伤口(?:化脓|流脓)",
    )),
    Concept("sepsis", "sepsis", _rx(
        r"\bsepsis\b|\bseptic\b|\bblood\s+poisoning\b", "败血症|脓毒症|感染性休克"
    )),
    Concept("sepsis_sign", "confusion, mottled skin, no urine or low blood pressure", _rx(
        r"\bconfus\w+|\bdisoriented\b|\b(?:very|extremely)\s+(?:drowsy|lethargic|sleepy)\b",
        r"\b(?:mottled|blotchy|blue|grey|gray)\s+(?:skin|lips)\b"
        r"|\bskin\s+(?:is\s+|looks\s+)?(?:mottled|blotchy|blue|grey|gray)\b",
        r"\b(?:haven't|hasn't|not)\s+(?:peed|urinated|passed\s+urine|wee'?d)\b|\bno\s+urine\b",
        r"\b(?:blood\s+pressure|bp)\s+(?:is\s+)?(?:very\s+|really\s+|dangerously\s+)?low\b"
        r"|\blow\s+blood\s+pressure\b",
        r"\bfeels?\s+like\s+(?:i'm|he's|she's|i\s+am)\s+(?:going\s+to\s+die|dying)\b",
        r"意识模糊|神志不清|糊涂|皮肤(?:发花|花斑|发紫|发青)|没(?:有)?(?:尿|小便)|不(?:排)?尿"
        r"|血压(?:很|特别|非常)?低|四肢冰冷",
    )),
    Concept("fast_heart", "racing heart", _rx(
        r"\b(?:heart|pulse)\s+(?:is\s+|rate\s+is\s+)?(?:racing|pounding|very\s+fast|really\s+fast"
        r"|super\s+fast)\b|\bheart\s+racing\b",
        r"心跳(?:很|特别|非常)?快|心慌",
    )),
    Concept("fast_breathing", "fast breathing", _rx(
        r"\bbreathing\s+(?:very\s+|really\s+)?(?:fast|rapid|quickly)\b|\brapid\s+breathing\b",
        r"呼吸(?:很|特别|非常)?(?:快|急促)",
    )),
    # pregnancy, infants
    Concept("pregnant", "pregnancy", _rx(
        r"\bpregnan\w+|\b\d+\s+weeks?\s+(?:along|gestation)\b|\b(?:first|second|third)\s+trimester\b"
        r"|\bexpecting\s+a\s+baby\b",
        r"怀孕|孕(?:\d+|[一二两三四五六七八九十]+)(?:周|个月)|孕期|孕妇|有了身孕|怀了|早孕|孕早期|孕中期"
        r"|孕晚期",
    )),
    Concept("vaginal_bleeding", "bleeding", _rx(
        r"\bsoak\w*\s+through\b|\bpads?\b.{0,20}\bblood\b|\bbleed\w*|\bspotting\b|\bblood\s+clots?\b"
        r"|\bpass(?:ing|ed)\s+(?:\w+\s+)?clots\b|\bha?emorrhag\w+"
        r"|\bblood\s+(?:down|on|in)\s+(?:my\s+)?(?:legs|underwear|pad|toilet)",
        r"出血|流血|见红|血块",
    ), unless=_rx(r"\bgums?\b|\bnose\b|\bnosebleed|牙龈|鼻")),
    Concept("severe_abdominal_pain", "severe abdominal pain", _rx(
        r"\b(?:severe|sharp|terrible|bad|intense|excruciating|stabbing|unbearable)\s+(?:\w+\s+)?(?:abdominal"
        r"|stomach|belly|tummy|pelvic|lower\s+abdominal)\s+(?:pain|cramps?)\b",
        r"(?:剧烈|严重|很厉害|撕裂样)(?:的)?(?:腹痛|肚子痛|肚子疼|腹部疼痛)"
        r"|(?:肚子|腹部|小腹|下腹)(?:疼|痛)得(?:很)?厉害"
        r"|(?:肚子|腹部|小腹|下腹)\S{0,2}(?:剧烈|剧|严重)(?:的)?(?:疼痛|痛|疼)",
    )),
    Concept("young_infant", "baby under 3 months", _rx(
        r"\b(?P<n>" + _EN_NUMBER + r")[\s-]*(?P<unit>days?|weeks?|wks?|months?|mos?)[\s-]*old\b",
        r"\bborn\s+(?P<n6>" + _EN_NUMBER + r")\s+(?P<unit6>days?|weeks?)\s+ago\b",
        r"\b(?:newborn|neonate|new[-\s]born)\b|\bunder\s+(?:3|three)\s+months\b",
        r"\b(?:baby|son|daughter|infant|he|she)\b[^.]{0,30}?\b(?:is|turned|only|just)\s+(?P<n2>" + _EN_NUMBER
        + r")\s+(?P<unit2>days?|weeks?)\b(?!\s+(?:ago|pregnant))",
        r"(?P<n3>\d+|[一二两三四五六七八九十]+)\s*(?P<unit3>天|周|个?星期|个月)(?:大|的宝宝|的婴儿|的孩子"
        r"|宝宝|婴儿)",
        r"(?:宝宝|婴儿|孩子|儿子|女儿|宝贝|小孩)\S{0,3}?(?P<n4>\d+"
        r"|[一二两三四五六七八九十]+)\s*(?:个)?(?:半)?\s*(?P<unit4>天|周|星期|月)(?!前|之前|以前)",
        r"出生(?:了)?(?P<n5>\d+|[一二两三四五六七八九十]+)\s*(?P<unit5>天|周|个?星期|个月)",
        r"新生儿|刚出生|满月|不到(?:3|三)个月|不满(?:3|三)个月|(?:3|三)个月以下",
    ), accept=_young_infant_any),
    # general collapse
    Concept("unresponsive", "unresponsive or not breathing", _rx(
        r"\bunresponsive\b|\bunconscious\b(?!\s+(?:mind|bias))"
        r"|\bbarely\s+(?:responding|responsive|conscious|breathing)\b",
        r"\b(?:won't|will\s+not|can't|doesn't|isn't|is\s+not|not)\s+(?:wake|waking|be\s+woken|respond\w*"
        r"|come\s+to)\b",
        r"\b(?:not|isn't|is\s+not|stopped|no\s+longer)\s+breathing\b|\bno\s+(?:pulse|heartbeat)\b"
        r"|\bcollapsed\b",
        r"\bcardiac\s+arrest\b",
        r"昏迷|昏倒|叫\S{0,3}不醒"
        r"|没(?:有)?(?:了)?(?:意识(?!到)|反应|知觉|心跳|脉搏|呼吸(?!困难|急促|不畅|道))|不省人事|人事不省"
        r"|倒地不起|心脏骤停|呼吸心跳停止|休克",
    )),
)




# fmt: on


# --- rules ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Rule:
    """Fires when every group has at least one affirmed concept."""

    category: str
    name: str
    groups: tuple[tuple[str, ...], ...]


# fmt: off
RULES: tuple[Rule, ...] = (
    Rule("unresponsive", "unresponsive, not breathing or collapsed", (("unresponsive",),)),
    Rule("breathing", "severe difficulty breathing", (("severe_dyspnea",),)),
    Rule("breathing", "too breathless to talk", (("dyspnea",), ("speech_limited",))),
    Rule("cardiac", "heart attack named as happening now", (("heart_attack",),)),
    Rule("cardiac", "severe chest pain", (("severe_chest_pain",),)),
    Rule("cardiac", "chest pain with breathlessness, sweating or pain spreading to the arm/jaw",
         (("chest_pain",), ("dyspnea", "severe_dyspnea", "sweating", "radiating_pain", "faint",
                            "loss_of_consciousness", "unresponsive"))),
    Rule("stroke", "FAST sign", (("face_droop", "one_sided_weakness", "slurred_speech", "sudden_vision_loss",
                                  "sudden_confusion", "stroke_now"),)),
    Rule("anaphylaxis", "anaphylaxis or throat swelling", (("anaphylaxis", "throat_swelling"),)),
    Rule("anaphylaxis", "allergen exposure with breathing trouble or swelling",
         (("allergen_exposure",), ("dyspnea", "severe_dyspnea", "face_swelling", "throat_swelling"))),
    Rule("anaphylaxis", "allergen exposure with hives and faintness",
         (("allergen_exposure",), ("hives",), ("faint", "loss_of_consciousness"))),
    Rule("bleeding", "bleeding that will not stop", (("heavy_bleeding",),)),
    Rule("gi_bleed", "vomiting blood or black, tarry stools", (("gi_bleeding",),)),
    Rule("overdose", "overdose or poisoning", (("overdose",),)),
    Rule("suicide", "suicidal thoughts or self-harm", (("suicidal",),)),
    Rule("seizure", "seizure lasting 5 minutes or more", (("seizure_prolonged",),)),
    Rule("seizure", "repeated or non-stop seizures", (("seizure_repeated",),)),
    Rule("head_injury", "head injury with loss of consciousness or warning signs",
         (("head_injury",), ("loss_of_consciousness", "head_injury_warning"))),
    Rule("thunderclap_headache", "sudden, worst-ever headache", (("thunderclap",),)),
    Rule("thunderclap_headache", "headache described as the worst ever", (("headache",), ("worst_ever",))),
    Rule("meningitis", "fever with stiff neck", (("fever",), ("stiff_neck",))),
    Rule("meningitis", "rash that does not fade", (("non_blanching_rash",),)),
    Rule("meningitis", "stiff neck with light sensitivity",
         (("stiff_neck",), ("photophobia",), ("headache", "fever"))),
    Rule("sepsis", "sepsis named", (("sepsis",),)),
    Rule("sepsis", "fever or infection with confusion, mottled skin, no urine or low blood pressure",
         (("fever", "infection"), ("sepsis_sign",))),
    Rule("sepsis", "fever or infection with racing heart and fast breathing",
         (("fever", "infection"), ("fast_heart",), ("fast_breathing",))),
    Rule("pregnancy", "bleeding or severe abdominal pain in pregnancy",
         (("pregnant",), ("vaginal_bleeding", "severe_abdominal_pain"))),
    Rule("infant_fever", "fever in a baby under 3 months", (("young_infant",), ("fever",))),
)
# fmt: on


# --- assertion context (negation, history, hypothesis, habit) -----------------------------------------

# fmt: off
_NEG_PRE = (
    (re.compile(r"\b(?:no|not|never|without|nor|neither|none|no\s+longer|don't|doesn't|didn't|haven't|hasn't|"
                r"hadn't|isn't|aren't|wasn't|weren't)\b"), 5),
    (re.compile(r"\b(?:den(?:y|ies|ied|ying)|negative\s+for|free\s+of|absence\s+of|absent|rule[sd]?\s+out|ruled\s+out|"
                r"no\s+signs?\s+of|no\s+history\s+of)\b"), 8),
    (re.compile(r"不是|不(?!是)"), 2),
    (re.compile(r"没有|没|无|否认|未|并未|并无|从未|从没|排除"), 8),
)
# Negation words that do not negate what follows.
_PSEUDO = re.compile(
    r"\bnot\s+(?:only|just|sure|certain|clear|getting\s+better|improving|stopping|responding)\b"
    r"|\bno\s+(?:doubt|idea|matter|one|better|improvement|relief|warning|reason\s+to\s+live|point)\b"
    r"|\b(?:don't|doesn't|didn't)\s+know\b|\bnobody\b|\bnothing\s+(?:helps|works)\b|\bwithout\s+warning\b"
    r"|\b(?:doesn't|does\s+not|won't|will\s+not|isn't|is\s+not|not|hasn't|has\s+not|didn't"
    r"|did\s+not)\s+(?:stop|stopping|go\s+away|going\s+away|gone\s+away|ease|easing|improve|improving|work"
    r"|working|help|helping|settle|settling|get\s+better|getting\s+better|fade|disappear|wake|waking"
    r"|respond\w*|breathing|blanch)\b"
    r"|\bnever\s+(?:had|felt|experienced)\s+(?:\w+\s+)?(?:anything|pain|a\s+head\s?ache"
    r"|head\s?ache)\s+(?:like|this)\b|\bno\s+(?:pulse|heartbeat|urine)\b"
    r"|\b(?:haven't|hasn't)\s+(?:peed|urinated|passed\s+urine)\b|不停|不止|不断|不住|不了|不得|不行|不舒服"
    r"|不知道|不确定|不清楚|不太清楚|无法|无力|无缘无故|毫无征兆|没有?(?:任何)?征兆|忍不住|不对劲|不醒|不省"
    r"|不上|不过气|不出|不起|不来|不开|不动|不清|不利索|不下去|不想活|不(?:褪|退)|没完|没用|没效果|没好"
    r"|不见好|没法|不能|不会说|不到|不满|没多久|没几"
    r"|没(?:有)?(?:了)?(?:意识|反应|知觉|呼吸(?!困难|急促|不畅)|心跳|脉搏|尿|小便)|不(?:排)?尿|无意识"
    r"|从来没有?(?:这么|这样)"
)
_NEG_POST = (
    (re.compile(r"\b(?:is|are|has|have|had|was)\s+(?:now\s+|since\s+|completely\s+|already\s+|all\s+)?(?:gone(?!\s+on)|resolved|stopped|"
                r"subsided|settled|cleared|better|fine|normal)\b|\bwent\s+away\b|\bruled\s+out\b"
                r"|\bcame\s+back\s+(?:normal|"
                r"negative|clear)\b|\b(?:is|was)\s+negative\b"), 4),
    (re.compile("(?:已经|已)?(?:好了|好多了|消失了|缓解了|止住了|停了|停止了|没了|退了|退烧了"
                "|不(?:痛|疼)了)"), 4),
)
_SCOPE_END = re.compile(
    r"\b(?:now|which|who|whereas|still|apart\s+from|aside\s+from|other\s+than|and\s+then|then)\b|现在|而且"
)

_HISTORICAL = re.compile(
    r"\b(?:(?:\d+|a|an|one|two|three|four|five|six|seven|eight|nine|ten|few|several|many|couple\s+of"
    r"|some)\s+)?(?:years?|months?|weeks?|decades?)\s+(?:ago|back|earlier)\b"
    r"|\blast\s+(?:year|month|week|spring|summer|fall|autumn|winter|time)\b"
    r"|\b(?:in|since|back\s+in)\s+(?:19|20)\d\d\b|\bas\s+a\s+(?:child|kid|teen|teenager|baby|toddler)\b"
    r"|\bwhen\s+(?:i|he|she)\s+was\s+(?:a\s+|younger|little|young|small|\d+)|\bgrowing\s+up\b|\bchildhood\b"
    r"|\bin\s+(?:my|his|her)\s+(?:teens|twenties|thirties|forties|youth)\b|\b(?:history|hx|h/o)\s+of\b"
    r"|\bpast\s+(?:medical\s+)?history\b|\bused\s+to\b|\bpreviously\b"
    r"|\b(?:fainted|collapsed|happened|passed\s+out|seized)\s+once\b|\bonce\s+(?:before|in\s+the\s+past)\b"
    r"|\bin\s+the\s+past\b|\bonce\s+had\b|\blong\s+ago\b|\byears\s+back\b|\bsurviv(?:ed|or)\b"
    r"|\brecover(?:ing|ed|y)\s+from\b|\bat\s+the\s+time\b|\bback\s+then\b|\bthat\s+time\b"
    r"|\bafter\s+(?:my|his|her)\s+(?:stroke|heart\s+attack|seizure|surgery|overdose)\b|\bfamily\s+history\b"
    r"|\bruns\s+in\s+(?:my|the|our)\s+family\b|\bdied\s+(?:of|from)\b|\bpassed\s+away\b|去年|前年|上个?月"
    r"|上(?:个)?(?:星期|礼拜|周)"
    r"|(?:几|多|好几|\d+|[一二两三四五六七八九十]+)(?:年|个月|个?星期|周)(?:前|之前|以前)|(?<![钟时天])以前"
    r"|当时|那时(?:候)?|那次|曾经|(?<!不)曾|(?<![晕昏死])过去|既往|病史|小时候|年轻(?:时|的时候)|早年|当年"
    r"|从前|上次|那年|家族史|遗传|去世|死于|过世|后遗症"
    r"|(?:中风|得|患|有|发作|犯|出现|发生|经历|抽|晕倒?|昏迷|休克|住院|做|吐)过(?![敏量去来])"
)
_AGE_AGO = re.compile(r"\bborn\s+\S+\s+(?:days?|weeks?|months?)\s+ago\b")  # an age, not a past event
_OTHER_PERSON_PAST = re.compile(
    r"\b(?:my|his|her|our)\s+(?:father|dad|daddy|mother|mom|mum|grand(?:father|pa|mother|ma|parents?)|granny"
    r"|uncle|aunt|auntie|brother|sister|cousin|parents?|husband|wife|partner|son|daughter|friend|neighbou?r"
    r"|colleague|coworker|relatives?)\b.*\b(?:had|died|suffered|was\s+diagnosed|got\s+diagnosed"
    r"|was\s+hospitali[sz]ed)\b"
)
_RECENT = re.compile(
    r"\b(?:just|right\s+now|now|currently|at\s+the\s+moment|today|tonight"
    r"|this\s+(?:morning|afternoon|evening)|is\s+having|keeps|still|again|yesterday|last\s+night)\b"
    r"|\b(?:\d+|a\s+few|few|a\s+couple\s+of|several|ten|twenty|thirty|an?)\s+(?:minutes?|mins?|hours?"
    r"|hrs?)\s+ago\b|\b(?:for|in)\s+the\s+(?:last|past)\s+(?:\w+\s+)?(?:minutes?|hours?|mins?)\b|现在|正在"
    r"|刚才|刚刚|此刻"
)
_HYPOTHETICAL = re.compile(
    r"\b(?:if|what\s+if|in\s+case|suppose|supposing|hypothetically|whether|unless)\b"
    r"|\b(?:warning\s+)?(?:signs?|symptoms?|risks?|risk\s+factors?|causes?|chances?|odds|rates?|statistics"
    r"|complications?|treatments?|prevention)\s+(?:of|for)\b"
    r"|\bhow\s+(?:do|can|would|should|could)\s+(?:i|you|we|one|someone|they)\s+(?:know|tell|recogni[sz]e"
    r"|prevent|avoid|spot|help|support|treat|lower|reduce)\b|\bprevent(?:ing|ion|ed|s)?\b|\bavoid(?:ing)?\b"
    r"|\b(?:afraid|scared|worried|anxious|nervous|fear)\s+(?:of|about)\s+(?:getting|having|developing)\b"
    r"|\bwill\s+i\s+(?:get|have)\b|\bcould\s+i\s+(?:get|have|develop)\b|\bat\s+risk\b"
    r"|\bwhat\s+(?:is|are|causes|happens)\b|\bwhat's\s+(?:a|an|the)\b"
    r"|\b(?:can|could|does|do|might|would|will)\s+(?:[\w']+\s+){0,3}(?:cause|lead\s+to|trigger|increase)\b"
    r"|\bhow\s+(?:much|many|long|often)\b|\b(?:max(?:imum)?|safe|lethal|toxic)\s+dose\b|\bis\s+it\s+safe\b"
    r"|\b(?:learn|read|reading)\s+about\b"
    r"|\b(?:article|essay|homework|research\s+paper|documentary|movie|novel|tv\s+show|quiz|exam)\b"
    r"|\bsomeday\b|\bin\s+the\s+future\b|如果|假如|万一|要是|假设|假使|倘若|预防|避免|风险|几率|概率"
    r"|会不会(?:得|引起|导致)|(?:有)?哪些(?:症状|表现|征兆|原因)|哪些人|什么人|容易(?:得|患)|高危"
    r"|什么(?:症状|表现|征兆|原因|先兆|前兆|预兆|信号)"
    r"|(?:症状|表现|征兆|原因|先兆|前兆)(?:是什么|有哪些|有什么)|是什么病|什么是"
    r"|(?:怎么|怎样|如何)(?:预防|判断|识别|知道|区分|避免|看出|分辨)|科普|文章|电视剧|电影|小说|考试|作业"
    r"|担心(?:会|以后)|害怕(?:会|得)|以后会"
)
_HABITUAL = re.compile(
    r"\b(?:usually|sometimes|occasionally|from\s+time\s+to\s+time|now\s+and\s+then|tends?\s+to)\b"
    r"|有时(?:候)?|偶尔|平时|时不时"
)
_PRESENT = re.compile(r"\b(?:right\s+now|at\s+the\s+moment|currently|as\s+we\s+speak)\b|此刻|正在")

# fmt: on
_CJK = re.compile(r"[\u3400-\u9fff]")


def _gap_units(gap: str) -> int:
    """Distance between a trigger and a finding: words, plus CJK characters."""
    return len(re.findall(r"[a-z0-9']+", gap)) + len(_CJK.findall(gap))


def _overlaps(a: tuple[int, int], b: tuple[int, int]) -> bool:
    return a[0] < b[1] and b[0] < a[1]


@dataclass
class _ClauseContext:
    text: str
    sentence_history: str | None = None  # a history marker elsewhere in the same sentence
    pseudo: list[tuple[int, int]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.pseudo = [m.span() for m in _PSEUDO.finditer(self.text)]

    def _triggers(self, pattern: re.Pattern[str], span: tuple[int, int]) -> list[re.Match[str]]:
        return [
            m for m in pattern.finditer(self.text)
            if not _overlaps(m.span(), span) and not any(_overlaps(m.span(), p) for p in self.pseudo)
        ]  # fmt: skip

    def negated_by(self, span: tuple[int, int]) -> str | None:
        for pattern, window in _NEG_PRE:
            for m in self._triggers(pattern, span):
                gap = self.text[m.end() : span[0]]
                if m.end() <= span[0] and _gap_units(gap) <= window and not _SCOPE_END.search(gap):
                    return m.group(0)
        for pattern, window in _NEG_POST:
            for m in self._triggers(pattern, span):
                gap = self.text[span[1] : m.start()]
                if m.start() >= span[1] and _gap_units(gap) <= window and not _SCOPE_END.search(gap):
                    return m.group(0)
        return None

    def historical_by(self) -> str | None:
        ages = [a.span() for a in _AGE_AGO.finditer(self.text)]
        marks = (h for h in _HISTORICAL.finditer(self.text) if not any(_overlaps(h.span(), a) for a in ages))
        m = next(marks, None)
        if m:
            return m.group(0)
        m = _OTHER_PERSON_PAST.search(self.text)
        if m and not _RECENT.search(self.text):
            return m.group(0)
        if self.sentence_history and not _RECENT.search(self.text):
            return self.sentence_history
        return None

    def hypothetical_by(self, span: tuple[int, int]) -> str | None:
        if _PRESENT.search(self.text):
            return None
        for m in self._triggers(_HYPOTHETICAL, span):
            # Chinese questions put the question word last ("心梗有什么先兆"): those count anywhere.
            if m.end() <= span[0] or _CJK.search(m.group(0)):
                return m.group(0)
        return None

    def habitual_by(self) -> str | None:
        m = _HABITUAL.search(self.text)
        return m.group(0) if m else None

    def status(self, span: tuple[int, int]) -> tuple[str, str | None]:
        trigger = self.negated_by(span)
        if trigger:
            return "negated", trigger
        trigger = self.historical_by()
        if trigger:
            return "past or family history", trigger
        trigger = self.hypothetical_by(span)
        if trigger:
            return "hypothetical or general question", trigger
        trigger = self.habitual_by()
        if trigger:
            return "habitual", trigger
        return "affirmed", None

    def clean(self) -> bool:
        """No negation, history, hypothesis or habit anywhere: safe to judge by similarity alone."""
        everywhere = (-1, -1)
        return not (
            any(self._triggers(p, everywhere) for p, _ in _NEG_PRE)
            or any(self._triggers(p, everywhere) for p, _ in _NEG_POST)
            or self.historical_by()
            or self._triggers(_HYPOTHETICAL, everywhere)
            or self.habitual_by()
        )


# --- findings ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Finding:
    concept: str
    text: str
    clause: str
    status: str
    trigger: str | None = None

    @property
    def affirmed(self) -> bool:
        return self.status == "affirmed"


_DURATION_EN = re.compile(
    r"(?P<n>"
    + _EN_NUMBER
    + r")\s*\+?\s*(?:(?:-|to)\s*\d+\s*)?(?P<unit>minutes?|mins?|hours?|hrs?)\b(?!\s+ago)"
)
_DURATION_ZH = re.compile(r"(?P<n>" + _ZH_NUMBER + r")\s*多?\s*(?P<unit>分钟|个?(?:多)?小时)(?!前|之前|以前)")


_OVER_FIVE_MINUTES = re.compile(
    r"\b(?:over|more\s+than|longer\s+than)\s+(?:five|5)\s+min|超过(?:五|5)分钟|好几分钟|十几分钟"
)


def _long_duration(clause: str) -> str | None:
    """A stated duration of 5 minutes or more ("for 6 minutes", "over ten mins", "十几分钟")."""
    for pattern in (_DURATION_EN, _DURATION_ZH):
        for m in pattern.finditer(clause):
            amount = _number(m.group("n"))
            if amount is None:
                continue
            if m.group("unit").startswith(("h", "个", "小")) or amount >= 5:
                return m.group(0)
    if _OVER_FIVE_MINUTES.search(clause):
        return "over five minutes"
    return None


def _contexts(text: str) -> list[tuple[str, _ClauseContext]]:
    """Each clause's context, with the whole sentence it belongs to."""
    contexts = []
    for sentence in sentences(normalise(text)):
        own = [_ClauseContext(clause).historical_by() for clause in sentence]
        inherited = next((h for h in own if h), None)
        contexts += [(" ".join(sentence), _ClauseContext(clause, inherited)) for clause in sentence]
    return contexts


_NON_STOP = re.compile(
    r"\b(?:won't|isn't|is\s+not|not|hasn't|has\s+not|doesn't)\s+stop\w*|\bstill\s+going\b"
    r"|\bgoing\s+on\s+and\s+on\b|停不下来|不停|没停|不止|一直(?:在)?(?:抽|发作)|在抽(?!烟)"
)


def find_concepts(text: str) -> list[Finding]:
    """Every concept occurrence in ``text`` with its assertion status (text is normalised here)."""
    findings: list[Finding] = []
    for sentence, context in _contexts(text):
        clause = context.text
        for concept in _CONCEPTS:
            if concept.unless is not None and concept.unless.search(clause):
                continue
            for m in concept.pattern.finditer(clause):
                if concept.accept is not None and not concept.accept(m):
                    continue
                status, trigger = context.status(m.span())
                findings.append(Finding(concept.name, m.group(0).strip(), clause, status, trigger))
                if concept.name == "seizure" and status == "affirmed":
                    # The duration or "won't stop" often sits in the next clause ("抽搐，一直不停").
                    non_stop = _NON_STOP.search(sentence)
                    duration = _long_duration(clause) or (non_stop.group(0) if non_stop else None)
                    if duration:
                        evidence = f"{m.group(0)} … {duration}"
                        findings.append(Finding("seizure_prolonged", evidence, clause, status))
    return findings


# --- similarity ----------------------------------------------------------------------------------------

# Written for this screen (none is taken from the evaluation set): how people describe each emergency.
EMERGENCY_EXEMPLARS: dict[str, tuple[str, ...]] = {
    "cardiac": (
        "it feels like an elephant is sitting on my chest and I'm drenched in sweat",
        "tight squeezing pressure in my chest spreading into my left arm",
        "my husband is clutching his chest, pale and sweaty",
        "heavy pain behind the breastbone and I feel sick and short of breath",
        "I think I am having a heart attack",
        "a vice-like grip across my chest and my jaw aches",
        "chest discomfort with nausea, cold and clammy skin",
    ),
    "breathing": (
        "I can't breathe properly, I'm gasping for air",
        "my child is struggling to breathe and her lips look blue",
        "each breath is a fight and I can't finish a sentence",
        "my asthma inhaler isn't helping and I can barely get air in",
        "he is wheezing badly and his chest is sucking in with every breath",
        "she's choking on food and can't get any air",
    ),
    "stroke": (
        "his face is drooping on one side and his words come out jumbled",
        "my mother suddenly can't lift her right arm and her speech is slurred",
        "out of nowhere I went numb down my left side and cannot talk properly",
        "my grandfather is suddenly confused and one side of his mouth sags",
        "I suddenly lost vision in one eye",
        "she suddenly can't understand what we say and her arm is weak",
        "his leg gave way suddenly and he can't feel one side of his body",
    ),
    "suicide": (
        "I want to end my life tonight",
        "I have pills saved up and a plan to kill myself",
        "I don't see the point of living anymore and want to disappear forever",
        "I keep cutting myself to cope",
        "everyone would be better off without me, I'm going to end it",
        "I've decided how I'm going to die",
        "my brother said he wants to take his own life",
    ),
    "anaphylaxis": (
        "after eating peanuts my throat is closing up and my lips are swelling",
        "got stung by a bee and now I'm wheezing with hives everywhere",
        "my tongue is swelling and I can hardly swallow after taking the antibiotic",
        "severe allergic reaction, face swelling and trouble breathing",
        "after the medicine my whole body broke out in welts and I feel faint",
    ),
    "bleeding": (
        "I cut my leg badly and the blood keeps pouring out even with pressure",
        "the wound is gushing blood and won't stop",
        "he is losing a lot of blood from a deep gash",
        "blood is soaking through every bandage we put on",
        "she was stabbed and is bleeding",
    ),
    "gi_bleed": (
        "I threw up a lot of bright red blood",
        "my vomit looks like coffee grounds",
        "my stools have turned black and sticky like tar",
        "there is a lot of blood coming from my back passage and I feel faint",
    ),
    "overdose": (
        "I swallowed a whole bottle of sleeping pills",
        "my toddler drank some bleach from under the sink",
        "he took way too many painkillers on purpose",
        "we think there is a gas leak, everyone is dizzy with headaches",
        "my child got into the medicine cabinet and ate some tablets",
        "she mixed a lot of pills with alcohol",
    ),
    "seizure": (
        "my son has been convulsing for more than five minutes",
        "she had one seizure after another without waking up in between",
        "he's still shaking and jerking and it won't end",
        "the fit has lasted a long time and she isn't coming round",
    ),
    "head_injury": (
        "he fell off the ladder, hit his head and was knocked out for a minute",
        "after banging her head she keeps vomiting and is very drowsy",
        "he took a hard blow to the head and now he's confused",
    ),
    "thunderclap_headache": (
        "the worst headache of my life came on in a split second",
        "a sudden explosive pain in my head like I was hit with a bat",
        "my head suddenly hurts worse than anything I have ever felt",
    ),
    "meningitis": (
        "high fever, stiff neck and the light hurts his eyes",
        "my daughter has a fever and purple spots that don't fade when I press a glass on them",
        "he's feverish, can't bend his neck and is getting drowsy",
    ),
    "sepsis": (
        "he has an infection, is shivering, confused and his skin is blotchy",
        "high fever, racing heart, breathing fast and I feel like I'm going to die",
        "since the infection she is cold, pale, barely peeing and not making sense",
    ),
    "pregnancy": (
        "I'm 10 weeks pregnant and bleeding heavily with cramps",
        "pregnant and sudden severe pain low on one side of my belly",
        "I'm expecting and there's blood running down my legs",
    ),
    "unresponsive": (
        "my dad collapsed and isn't responding",
        "she's not breathing and has no pulse",
        "I can't wake him up",
        "he fell to the floor and is limp and not answering",
    ),
}
BENIGN_EXEMPLARS: tuple[str, ...] = (
    "I have had a mild headache since this morning",
    "I get headaches when I'm stressed at work",
    "my chest hurts a little when I cough",
    "I pulled a muscle in my chest at the gym",
    "I have a sore throat and a runny nose",
    "I have a fever and a cough",
    "my toddler has a fever and is a bit grumpy",
    "my neck is stiff from sleeping awkwardly",
    "I get a bit short of breath climbing stairs",
    "my arm is sore after the vaccine",
    "I cut my finger while cooking and it bled a little",
    "my gums bleed when I brush my teeth",
    "I have a nosebleed",
    "I feel tired all the time",
    "I feel a bit dizzy when I stand up quickly",
    "I have heartburn after spicy food",
    "I have lower back pain",
    "my knee hurts when I run",
    "I have a rash on my arm that itches",
    "I'm pregnant and feeling nauseous in the mornings",
    "I have diarrhoea and stomach cramps",
    "I feel sad and stressed lately",
    "I can't sleep well at night",
    "I'm allergic to cats and keep sneezing",
    "I sprained my ankle",
    "what are the symptoms of diabetes",
    "how can I lower my blood pressure",
    "is it safe to take ibuprofen with paracetamol",
    "what does this x-ray show",
    "please look at my MRI report",
    "can you convert this CT scan to an MRI",
    "show me my previous lab results",
    "hello, how are you today",
    "thank you for your help",
    "I have a cold",
    "my eyes are itchy and red",
    "I have constipation",
    "my period is late",
    "I have an earache",
    "my blood sugar is a bit high this morning",
    "I bumped my head on a cupboard, it's a little sore",
    "I feel anxious before exams",
    "my baby has a mild cold and a runny nose",
    "I vomited once after dinner",
    "my seizures are well controlled with medication",
    "she has epilepsy and takes her tablets every day",
    "I have depression and see a therapist",
    "I have asthma and use my inhaler when I exercise",
    "I'm allergic to peanuts, which snacks are safe",
    "my blood pressure is a little high",
    "I have a headache and a blocked nose",
    "my period is heavier than usual this month",
    "my baby has a slight temperature after her vaccinations",
    "a red rash that fades when you press on it",
    "bee sting on my hand, red, swollen and itchy around the spot",
    "out of breath after running for the bus",
    "my stool is darker since I started iron supplements",
    "I feel lonely and would like someone to talk to",
    "I have a bruise after bumping into the table",
    "I want to book an appointment with my doctor",
    "how long does it take to recover from the flu",
    "my grandmother is forgetful and sometimes confused",
    "I feel my heart pounding after coffee",
    "I'm tired and have a slight fever after my booster",
)
EMERGENCY_EXEMPLARS_ZH: dict[str, tuple[str, ...]] = {
    "cardiac": (
        "胸口像被大石头压着，一直出冷汗",
        "心口疼得厉害，疼到左边胳膊",
        "胸闷胸痛，喘不过气，脸色发白",
        "我觉得是心梗，胸口很痛",
    ),
    "breathing": (
        "喘不上气，嘴唇发紫",
        "孩子呼吸很费力，胸口一吸一凹",
        "哮喘发作，喷药没用，快憋死了",
        "吃东西噎住了，喘不了气",
    ),
    "stroke": (
        "突然嘴歪，说话含糊",
        "一边手脚突然没劲，抬不起来",
        "老人突然口齿不清，半边脸麻",
        "突然一只眼看不见东西",
        "突然糊涂，认不出家里人",
    ),
    "suicide": (
        "我不想活了",
        "我想自杀，已经准备好了药",
        "活着没意思，想结束自己",
        "我在割自己的手腕",
        "想从楼上跳下去",
    ),
    "anaphylaxis": (
        "吃了花生后喉咙发紧，喘不过气",
        "被蜂蛰了，全身起疹子，头晕",
        "打完针后嘴唇和脸肿起来，呼吸困难",
    ),
    "bleeding": (
        "伤口一直流血，按着也止不住",
        "血往外喷，流了一地",
        "刀伤很深，出了很多血",
    ),
    "gi_bleed": (
        "吐了一大口鲜血",
        "吐出来的东西像咖啡渣",
        "拉黑色像柏油的大便，头晕",
    ),
    "overdose": (
        "吃了一整瓶安眠药",
        "孩子误喝了消毒液",
        "喝了农药",
        "家里煤气泄漏，人都晕了",
        "一次吃了很多止痛药",
    ),
    "seizure": (
        "抽搐了很久还不停",
        "一次接一次地抽，人一直不醒",
        "癫痫发作超过五分钟",
    ),
    "head_injury": (
        "摔倒撞到头，昏过去了",
        "头被撞后一直吐，还想睡觉",
        "从高处摔下来，头部受伤，人迷糊",
    ),
    "thunderclap_headache": (
        "突然头痛得像要炸开",
        "这辈子最严重的头痛，一下子就来了",
    ),
    "meningitis": (
        "发高烧，脖子硬，怕光",
        "发烧，身上出紫色的点，压了不褪",
    ),
    "sepsis": (
        "感染后发高烧，寒战，人糊涂",
        "发烧，心跳很快，呼吸很急，没有尿",
    ),
    "pregnancy": (
        "怀孕了，下面大量出血",
        "孕期突然肚子剧痛，还在流血",
    ),
    "unresponsive": (
        "人倒在地上叫不醒",
        "没有呼吸，也摸不到脉搏",
        "昏迷了，没有反应",
    ),
}
BENIGN_EXEMPLARS_ZH: tuple[str, ...] = (
    "有点头疼，可能是没睡好",
    "感冒了，流鼻涕，嗓子疼",
    "有点咳嗽",
    "发烧三十八度，咳嗽",
    "拉肚子两天了",
    "胃不舒服，吃了辣的",
    "爬楼梯有点喘",
    "脖子酸，落枕了",
    "膝盖疼",
    "腰疼",
    "皮肤痒，起了几个小疙瘩",
    "手指划破了，出了一点血",
    "刷牙牙龈出血",
    "最近压力大，睡不好",
    "心情不好",
    "月经推迟了",
    "怀孕了，孕吐",
    "宝宝流鼻涕",
    "孩子有点低烧，精神还好",
    "血压有点高",
    "血糖有点高",
    "想预约复诊",
    "帮我看看这个报告",
    "怎么预防感冒",
    "谢谢",
    "你好",
    "对花粉过敏，一直打喷嚏",
    "被蚊子咬了很痒",
    "头有点晕，站起来的时候",
    "吃多了胃胀",
    "癫痫一直在吃药，控制得很好",
    "以前得过中风，现在恢复得不错",
    # everyday requests, so their "我想", "帮我" and "请问" do not pull towards "我想死" and the like
    "我想预约挂号",
    "我想问一下检查结果",
    "我想了解一下这个药怎么吃",
    "帮我把这张片子转成核磁",
    "帮我查一下上次的记录",
    "请问医院几点开门",
    "我想减肥，怎么吃比较好",
)


@lru_cache(maxsize=1)
def _english_exemplars() -> tuple[np.ndarray, tuple[str, ...], tuple[str, ...], np.ndarray]:
    categories = tuple(c for c, texts in EMERGENCY_EXEMPLARS.items() for _ in texts)
    texts = tuple(t for group in EMERGENCY_EXEMPLARS.values() for t in group)
    return embeddings.embed(list(texts)), texts, categories, embeddings.embed(list(BENIGN_EXEMPLARS))


@lru_cache(maxsize=1)
def _chinese_exemplars() -> tuple[
    embeddings.NgramVectorizer, np.ndarray, tuple[str, ...], tuple[str, ...], np.ndarray
]:
    categories = tuple(c for c, texts in EMERGENCY_EXEMPLARS_ZH.items() for _ in texts)
    texts = tuple(normalise(t) for group in EMERGENCY_EXEMPLARS_ZH.values() for t in group)
    benign = [normalise(t) for t in BENIGN_EXEMPLARS_ZH]
    vectorizer = embeddings.NgramVectorizer([*texts, *benign])
    return vectorizer, vectorizer.transform(list(texts)), texts, categories, vectorizer.transform(benign)


@dataclass(frozen=True)
class SimilarityHit:
    """The closest emergency exemplar to one stretch of text, and how close the closest benign one is."""

    unit: str
    channel: str  # "embedding" (English, MiniLM) or "ngram" (Chinese, character n-grams)
    category: str
    score: float
    benign_score: float
    exemplar: str


@dataclass(frozen=True)
class Thresholds:
    embedding: float = SIM_THRESHOLD
    embedding_margin: float = SIM_MARGIN
    ngram: float = NGRAM_THRESHOLD
    ngram_margin: float = NGRAM_MARGIN

    def passes(self, hit: SimilarityHit) -> bool:
        if hit.channel == "embedding":
            floor, margin = self.embedding, self.embedding_margin
        else:
            floor, margin = self.ngram, self.ngram_margin
        return hit.score >= floor and hit.score - hit.benign_score >= margin


@dataclass(frozen=True)
class Analysis:
    """Everything the decision needs; :func:`decide` turns it into a :class:`TriageResult`."""

    findings: tuple[Finding, ...]
    similarity: tuple[SimilarityHit, ...]
    similarity_available: bool = True


# Someone calling their own symptom mild is not describing an emergency in so many words; rules still apply.
_MILD = re.compile(
    r"\b(?:a\s+bit|a\s+little|slight(?:ly)?|mild(?:ly)?|minor|small|tiny|lightly)\b|有点|一点|稍微|轻微"
)


def _similarity_units(text: str) -> list[str]:
    """Whole sentences when every clause is clean (more context), else the clean clauses on their own."""
    units = []
    for sentence in sentences(normalise(text)):
        contexts = [_ClauseContext(clause) for clause in sentence]
        history = next((h for h in (c.historical_by() for c in contexts) if h), None)
        clean = [c.text for c in contexts if c.clean() and not history and not _MILD.search(c.text)]
        units += [", ".join(sentence)] if len(clean) == len(sentence) else clean
    return [u for u in units if len(re.findall(r"[a-z]+", u)) >= 3 or len(_CJK.findall(u)) >= 4]


def _best_hits(
    units: list[str],
    channel: str,
    scores: np.ndarray,
    benign: np.ndarray,
    texts: tuple[str, ...],
    cats: tuple[str, ...],
) -> dict[str, SimilarityHit]:
    hits = {}
    for row, unit in enumerate(units):
        best = int(np.argmax(scores[row]))
        hits[unit] = SimilarityHit(
            unit,
            channel,
            cats[best],
            round(float(scores[row, best]), 4),
            round(float(benign[row]), 4),
            texts[best],
        )
    return hits


def similarity_units(text: str) -> list[str]:
    """The pieces of ``text`` the similarity signal embeds (for callers that batch embeddings)."""
    return _similarity_units(text)


def analyse_many(texts: Sequence[str]) -> list[Analysis]:
    """Rule findings and similarity scores for each text (one embedding call for the lot)."""
    findings = [tuple(find_concepts(text)) for text in texts]
    per_text = [_similarity_units(text) for text in texts]
    english = sorted({u for group in per_text for u in group if embeddings.cjk_fraction(u) < 0.3})
    chinese = sorted({u for group in per_text for u in group if embeddings.cjk_fraction(u) >= 0.3})
    hits: dict[str, SimilarityHit] = {}
    available = True
    if chinese:
        vectorizer, emergency, exemplars, categories, benign = _chinese_exemplars()
        vectors = vectorizer.transform(chinese)
        benign_best = (vectors @ benign.T).max(axis=1)
        hits |= _best_hits(chinese, "ngram", vectors @ emergency.T, benign_best, exemplars, categories)
    if english:
        try:
            emergency, exemplars, categories, benign = _english_exemplars()
            vectors = embeddings.embed(english)
        except embeddings.EmbeddingModelMissing as exc:
            log.warning("triage runs without its English similarity check: %s", exc)
            available = False
        else:
            benign_best = (vectors @ benign.T).max(axis=1)
            scores = vectors @ emergency.T
            hits |= _best_hits(english, "embedding", scores, benign_best, exemplars, categories)
    return [
        Analysis(found, tuple(hits[u] for u in group if u in hits), similarity_available=available)
        for found, group in zip(findings, per_text, strict=True)
    ]


def analyse(text: str) -> Analysis:
    return analyse_many([text])[0]


def decide(analysis: Analysis, thresholds: Thresholds | None = None) -> TriageResult:
    """Combine the rule findings and similarity hits of one message into a verdict."""
    thresholds = thresholds or Thresholds()
    affirmed: dict[str, list[Finding]] = {}
    for finding in analysis.findings:
        if finding.affirmed:
            affirmed.setdefault(finding.concept, []).append(finding)
    fired: dict[str, list[str]] = {}
    for rule in RULES:
        if all(any(name in affirmed for name in group) for group in rule.groups):
            evidence = [f'"{affirmed[n][0].text}"' for group in rule.groups for n in group if n in affirmed]
            fired.setdefault(rule.category, []).append(
                f"{CATEGORIES[rule.category]} (rule: {rule.name}): {', '.join(evidence)}"
            )
    by_similarity: dict[str, list[str]] = {}
    for hit in analysis.similarity:
        if thresholds.passes(hit):
            by_similarity.setdefault(hit.category, []).append(
                f'{CATEGORIES[hit.category]} ({hit.channel} similarity {hit.score:.2f} to "{hit.exemplar}", '
                f'closest benign {hit.benign_score:.2f}): "{hit.unit}"'
            )
    if fired or by_similarity:
        order = list(CATEGORIES)
        category = min(fired or by_similarity, key=order.index)
        reasons = [r for c in order for r in fired.get(c, [])]
        reasons += [r for c in order for r in by_similarity.get(c, []) if c not in fired]
        return TriageResult(red_flag=True, category=category, reasons=reasons)
    set_aside = [
        f'not counted: "{f.text}" ({f.status}: "{f.trigger}") in "{f.clause}"'
        for f in analysis.findings if not f.affirmed
    ]  # fmt: skip
    if not analysis.similarity_available:
        set_aside.append("English similarity check unavailable (embedding model missing): rules only")
    return TriageResult(red_flag=False, category=None, reasons=list(dict.fromkeys(set_aside))[:6])


def triage(text: str) -> TriageResult:
    """Screen one message for red flags."""
    return decide(analyse(text))


def triage_rules(text: str) -> TriageResult:
    """The rules alone, without the similarity signal: for screening text that is not a patient's
    own account (a model's draft explains symptoms in general terms, which similarity would flag)."""
    return decide(Analysis(findings=tuple(find_concepts(text)), similarity=(), similarity_available=False))


def triage_many(texts: Sequence[str]) -> list[TriageResult]:
    """Screen several messages (one embedding call for all of them)."""
    return [decide(a) for a in analyse_many(texts)]
