"""Numbers in a message, parsed rather than enumerated: age, pregnancy weeks, temperature (°C/°F),
oxygen saturation, blood sugar (mmol/L or mg/dL), blood pressure, pulse, breathing rate, and the counts
and durations said in a sentence ("4 seizures today", "vomited six times", "for 20 minutes", "抽了3次").
Works on normalised text (lower case, NFKC: full-width digits are already ASCII)."""

from __future__ import annotations

import re

_EN_WORDS = {
    "a": 1, "an": 1, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7, "eight": 8,
    "nine": 9, "ten": 10, "eleven": 11, "twelve": 12, "thirteen": 13, "fourteen": 14, "fifteen": 15,
    "sixteen": 16, "seventeen": 17, "eighteen": 18, "nineteen": 19, "twenty": 20, "thirty": 30, "forty": 40,
    "forty-five": 45, "fifty": 50, "sixty": 60, "seventy": 70, "eighty": 80, "ninety": 90, "couple": 2,
    "a couple of": 2, "few": 3, "a few": 3, "several": 4, "half": 0.5, "half an": 0.5, "half a": 0.5,
    "once": 1, "twice": 2, "thrice": 3,
}  # fmt: skip
_ORDINALS = {
    "second": 2, "third": 3, "fourth": 4, "fifth": 5, "sixth": 6, "2nd": 2, "3rd": 3, "4th": 4, "5th": 5,
    "6th": 6,
}  # fmt: skip
_ZH_DIGITS = {c: i for i, c in enumerate("零一二三四五六七八九")} | {"两": 2}

EN_NUM = (
    r"(?:\d+(?:\.\d+)?|" + "|".join(sorted((re.escape(w) for w in _EN_WORDS), key=len, reverse=True)) + ")"
)
ZH_NUM = r"(?:\d+(?:\.\d+)?|[零一二两三四五六七八九十百几半]+|好几|十几)"


def number(token: str) -> float | None:
    token = token.strip().replace("-", " ").replace("  ", " ") if token not in _EN_WORDS else token
    if re.fullmatch(r"\d+(?:\.\d+)?", token):
        return float(token)
    if token in _EN_WORDS:
        return float(_EN_WORDS[token])
    if token.replace(" ", "-") in _EN_WORDS:
        return float(_EN_WORDS[token.replace(" ", "-")])
    if token in ("几", "好几"):
        return 3.0
    if token == "十几":
        return 12.0
    if token == "半":
        return 0.5
    if token and all(c in _ZH_DIGITS or c in "十百几" for c in token):
        value, current = 0, 0
        for char in token:
            if char in _ZH_DIGITS:
                current = _ZH_DIGITS[char]
            elif char == "十":
                value += (current or 1) * 10
                current = 0
            elif char == "百":
                value += (current or 1) * 100
                current = 0
        value += current
        return float(value) if value or token == "零" else None
    return None


# --- durations -----------------------------------------------------------------------------------------

_EN_UNIT_MIN = {"sec": 1 / 60, "second": 1 / 60, "min": 1, "minute": 1, "hour": 60, "hr": 60, "h": 60,
                "day": 1440, "night": 1440, "week": 10080, "wk": 10080, "month": 43800, "year": 525600,
                "yr": 525600}  # fmt: skip
_EN_DURATION = re.compile(
    rf"(?<![\w.])(?P<n>{EN_NUM})(?:\s*(?:or|-|to)\s*{EN_NUM})?(?P<half>\s+and\s+a\s+half)?\s*\+?\s*(?P<unit>sec(?:ond)?s?|min(?:ute)?s?|h(?:ou)?rs?|h|hours?"
    r"|days?|nights?|w(?:ee)?ks?|months?|y(?:ea)?rs?)\b(?![\s-]*old|\s+ago|\s+back\b|\s+before|\s+pregnant|\s+gestation|\s+along)"
)
_EN_FUZZY_DURATION = {
    r"\ball (?:day|night)\b": 600, r"\bovernight\b": 480, r"\bsince (?:yesterday|last night)\b": 1080,
    r"\bsince this morning\b": 360, r"\ball week\b": 7200, r"\bfor ages\b": 43800,
    r"\bsince (?:monday|tuesday|wednesday|thursday|friday|saturday|sunday|the weekend)\b": 2880,
}  # fmt: skip
_ZH_UNIT_MIN = {"秒": 1 / 60, "分": 1, "分钟": 1, "小时": 60, "个小时": 60, "钟头": 60, "个钟头": 60,
                "天": 1440,
                "日": 1440, "晚": 1440, "周": 10080, "星期": 10080, "个星期": 10080, "礼拜": 10080,
                "个月": 43800, "月": 43800, "年": 525600}  # fmt: skip
_ZH_DURATION = re.compile(
    rf"(?P<n>{ZH_NUM})\s*多?\s*(?P<unit>分钟|秒|个小时|小时|个钟头|钟头|天|日|晚|个星期|星期|周|礼拜|个月|年)"
    r"(?!大|的?宝宝|的?婴儿|的?孩子|的?娃|岁|前|之前|以前)"
)
_ZH_FUZZY_DURATION = {r"一整天|一天一夜": 1440, r"一晚上|一整晚|一夜": 600, r"昨天(?:开始|起|晚上)": 1080,
                      r"今天早上开始|早上开始": 360}  # fmt: skip


_ZH_AGE_BEFORE = re.compile(r"(?:出生|宝宝|婴儿|孩子|娃|怀孕|孕|妊娠|才|刚)\s*(?:才|刚|只有|第)?\s*$")


def durations(sentence: str) -> list[float]:
    """Every duration in a sentence, in minutes (ages and pregnancy weeks are not durations)."""
    found: list[float] = []
    for match in _EN_DURATION.finditer(sentence):
        amount = number(match["n"])
        if amount is not None and match["half"]:
            amount += 0.5  # "four and a half hours"
        unit = match["unit"].rstrip("s")
        key = next((k for k in sorted(_EN_UNIT_MIN, key=len, reverse=True) if unit.startswith(k)), None)
        if amount is not None and key is not None:
            found.append(amount * _EN_UNIT_MIN[key])
    for match in _ZH_DURATION.finditer(sentence):
        if _ZH_AGE_BEFORE.search(sentence[max(0, match.start() - 6) : match.start()]):
            continue
        amount = number(match["n"])
        if amount is not None:
            found.append(amount * _ZH_UNIT_MIN[match["unit"]])
    for pattern, minutes in (_EN_FUZZY_DURATION | _ZH_FUZZY_DURATION).items():
        if re.search(pattern, sentence):
            found.append(float(minutes))
    return found


# --- counts --------------------------------------------------------------------------------------------

_SINGLE_WORDS = "|".join(w for w in _EN_WORDS if " " not in w)
_EN_TIMES = re.compile(rf"(?<![\w.])(?P<n>{EN_NUM})\s*(?:x|times)\b|\b(?P<w>once|twice|thrice)\b")
_ZH_TIMES = re.compile(rf"(?P<n>{ZH_NUM})\s*(?:次|回|遍|阵)")


def counts_near(sentence: str, finding_start: int, finding_end: int) -> float | None:
    """How many times a finding happened, from its sentence: "N times", "N <finding>", an ordinal
    before it ("the third seizure"), "抽了3次". Positions are relative to ``sentence``."""
    best: float | None = None
    for match in _EN_TIMES.finditer(sentence):
        value = number(match["n"] or match["w"])
        if value is not None:
            best = max(best or 0, value)
    for match in _ZH_TIMES.finditer(sentence):
        value = number(match["n"])
        if value is not None:
            best = max(best or 0, value)
    before = sentence[max(0, finding_start - 24) : finding_start]
    direct = re.search(rf"(?<![\w.])(?P<n>\d+|{_SINGLE_WORDS})\s+(?:\w+\s+)?$", before)
    if direct and sentence[finding_start:finding_end].rstrip().endswith("s"):
        value = number(direct["n"])
        if value is not None and value < 100:
            best = max(best or 0, value)
    ordinal = re.search(r"\b(?P<o>" + "|".join(_ORDINALS) + r")\s+(?:\w+\s+)?$", before)
    if ordinal:
        best = max(best or 0, float(_ORDINALS[ordinal["o"]]))
    return best


# --- measures of the whole message ---------------------------------------------------------------------

_PEOPLE = (
    r"dad|father|mum|mom|mother|son|daughter|husband|wife|partner|boyfriend|girlfriend|grandma|grandmother"
    r"|grandad|granddad|grandfather|grandpa|nan|nana|gran|granny|baby|brother|sister|friend|boy|girl|child"
    r"|kid|toddler|aunt|uncle|neighbour|neighbor|patient|fiance|fiancee|roommate|flatmate|colleague"
)
_NOT_AN_AGE = r"(?!\s*(?:weeks?|wks?|months?|days?|kg|lbs?|pounds|%|/|\.\d|\+\d|cm|mins?|minutes|hours?))"
_AGE_EN = [
    (re.compile(rf"(?<![\w.])(?P<n>{EN_NUM})[\s-]*(?:years?|yrs?|y)[\s-]*old\b"
                r"|(?<![\w.])(?P<n2>\d+)\s*(?:yo|y/o|y\.o\.)(?!\w)"), 12.0),
    (re.compile(rf"(?<![\w.])(?P<n>{EN_NUM})[\s-]*(?:months?|mo|mths?)[\s-]*old\b"), 1.0),
    (re.compile(rf"(?<![\w.])(?P<n>{EN_NUM})[\s-]*(?:weeks?|wks?)[\s-]*old\b"), 1 / 4.35),
    (re.compile(rf"(?<![\w.])(?P<n>{EN_NUM})[\s-]*days?[\s-]*old\b"), 1 / 30.4),
    (re.compile(r"\baged?\s+(?P<n>\d{1,3})\b|\b(?:i'm|i am|he's|she's|he is|she is)\s+(?P<n2>\d{1,3})\b"
                + _NOT_AN_AGE), 12.0),
    (re.compile(r"(?<![\w.])(?P<n>\d{1,2})\s*(?:m|f|male|female)\b(?!\w)"), 12.0),
    (re.compile(rf"\b(?:baby|babies|infant|newborn|son|daughter|he|she|he's|she's|it's|who's)\s+(?:is\s+)?"
                rf"(?:only\s+|just\s+)?(?P<n>{EN_NUM})\s*(?:weeks?|wks?)\b(?!\s*(?:pregnant|ago|along|gestation))"),
     1 / 4.35),
    (re.compile(rf"\b(?:baby|babies|infant|newborn|son|daughter|he|she|he's|she's|it's|who's)\s+(?:is\s+)?"
                rf"(?:only\s+|just\s+)?(?P<n>{EN_NUM})\s*(?:months?|mths?)\b(?!\s*(?:pregnant|ago))"), 1.0),
    (re.compile(rf"\b(?:{_PEOPLE}),?\s+(?:is|was|aged|who\s+is|turned)\s+(?P<n>\d{{1,3}})\b"
                + _NOT_AN_AGE), 12.0),
]  # fmt: skip
_ZH_ONLY = r"(?:刚刚满|刚满|才满|才|刚刚|刚|只有|出生|满)?"
_ZH_CHILD = r"(?:宝宝|婴儿|孩子|娃|小孩|儿子|女儿)"
_AGE_ZH = [
    (re.compile(rf"(?P<n>{ZH_NUM})\s*(?:周岁|岁)"), 12.0),
    (re.compile(rf"(?P<n>{ZH_NUM})\s*个?半?月(?:大|的?宝宝|的?孩子|的?婴儿|的?娃|龄)"), 1.0),
    (re.compile(rf"{_ZH_CHILD}{_ZH_ONLY}(?P<n>{ZH_NUM})\s*个半?月(?!了)"), 1.0),
    (re.compile(rf"{_ZH_CHILD}{_ZH_ONLY}(?P<n>{ZH_NUM})\s*(?:周|个星期)(?!了)"), 1 / 4.35),
    (re.compile(rf"{_ZH_CHILD}{_ZH_ONLY}(?P<n>{ZH_NUM})\s*天(?!前|了)"), 1 / 30.4),
    (re.compile(rf"(?P<n>{ZH_NUM})\s*(?:周|个星期)(?:大|的宝宝|宝宝)"), 1 / 4.35),
    (re.compile(rf"(?:出生|生下来)\D{{0,2}}(?P<n>{ZH_NUM})\s*天"
                rf"|(?P<n2>{ZH_NUM})\s*天(?:大|的宝宝|的新生儿)"), 1 / 30.4),
]  # fmt: skip


def _age_months(text: str) -> float | None:
    hits: list[tuple[int, float]] = []
    for pattern, factor in _AGE_EN + _AGE_ZH:
        for match in pattern.finditer(text):
            raw = match.groupdict().get("n") or match.groupdict().get("n2")
            value = number(raw) if raw else None
            if value is None:
                continue
            # "when i was 5" or "at 30 weeks" speak of another time, not the person's age now.
            if re.search(r"(?:when\s+(?:i|he|she)\s+was|at\s+age|since\s+(?:i\s+was|age))\s*$",
                         text[max(0, match.start() - 20) : match.start()]):  # fmt: skip
                continue
            if "半月" in match.group(0) and value >= 1:
                value += 0.5  # 一个半月: one and a half months
            hits.append((match.start(), value * factor))
    if re.search(r"\bnew-?born\b|新生儿", text):
        hits.append((text.find("new") if "new" in text else text.find("新生儿"), 0.5))
    if not hits:
        return None
    return min(hits)[1]  # the first age mentioned is, nearly always, the person the message is about


_PREG_WEEKS = [
    re.compile(r"(?<![\w.])(?P<n>\d{1,2})(?:\+\d)?\s*(?:weeks?|wks?)\s*"
               r"(?:pregnant|gestation|along|gone|into (?:my|the) pregnancy)"),
    re.compile(r"\b(?:pregnant|pregnancy)\b.{0,30}?\b(?:at\s+)?(?P<n>\d{1,2})(?:\+\d)?\s*(?:weeks?|wks?)\b"),
    re.compile(r"(?:^\W*|\b(?:i'm|i am|she's|she is|at)\s+)(?P<n>\d{1,2})(?:\+\d)?\s*(?:weeks?|wks?)\b"
               r"(?!\s*(?:old|ago))"),
    re.compile(rf"(?:怀孕|孕|妊娠)\s*(?:第)?(?P<n>{ZH_NUM})\s*(?:周|个?星期)"),
    # The obstetric notation weeks+days ("37+2", "孕36+5"): nothing else is written this way.
    re.compile(r"(?<![A-Za-z0-9_.+/])(?P<n>[1-4]\d)\s?\+\s?[0-6](?![\d.%/])(?!\s*(?:years?|yrs?|y/o|岁))"),
]  # fmt: skip
_PREG_MONTHS = re.compile(rf"(?:怀孕|孕|妊娠)\s*(?P<n>{ZH_NUM})\s*个?月|(?P<n2>\d)\s*months?\s*pregnant")


# Words that make a bare "33 weeks" a gestation: the pregnancy, the bump, the midwife, "with my first".
_PREGNANCY_CONTEXT = re.compile(
    r"pregnan|expecting|gestation|trimester|baby|bump|midwife|antenatal"
    r"|with my (?:first|second|third|1st|2nd|3rd)\b"
)


def _pregnancy_weeks(text: str) -> float | None:
    for pattern in _PREG_WEEKS:
        match = pattern.search(text)
        if match:
            value = number(match["n"])
            if value is not None and 3 <= value <= 43:
                if pattern is _PREG_WEEKS[2] and not _PREGNANCY_CONTEXT.search(text):
                    continue
                return value
    match = _PREG_MONTHS.search(text)
    if match:
        value = number(match["n"] or match["n2"])
        if value is not None:
            return value * 4.35
    return None


_TEMP_UNIT = re.compile(
    r"(?<![\w.])(?P<v>\d{2,3}(?:\.\d+)?)\s*(?:°|º|˚|degrees?|deg)?\s*(?P<u>c|f|celsius|fahrenheit|℃|℉)(?![a-z])"
    r"|(?<![\w.])(?P<v2>\d{2}(?:\.\d+)?)\s*(?:度|℃)"
)
_TEMP_CONTEXT = re.compile(
    r"(?:temp(?:erature)?|fever|thermometer|reading|spiked?|spiking|hit|ran|running|up to"
    r"|体温|发烧|发热|烧到|高烧|低烧|烧)"
    r"\D{0,14}?(?<![\d.])(?P<v>\d{2,3}(?:\.\d+)?)(?![\d/])"
)


_TEMP_BARE = re.compile(
    r"(?<![\d./])(?P<v>3[5-9]\.\d|4[0-2]\.\d)(?![\d/])(?!\s*(?:kg|kilo|mmol|mg|%|cm|mm|lb|pounds|weeks?|wks?))"
)
_TEMP_AFTER = re.compile(
    r"(?<![\d./])(?P<v>\d{2,3}(?:\.\d+)?)\s*(?:degrees?\s+)?(?:temp(?:erature)?|fever|on the thermometer)\b"
)


def _to_celsius(value: float, unit: str | None) -> float | None:
    if unit in ("f", "fahrenheit", "℉") or (unit is None and 93 <= value <= 111):
        value = (value - 32) * 5 / 9
    return value if 30 <= value <= 45 else None


def _temperature(text: str) -> float | None:
    values: list[float] = []
    for match in _TEMP_UNIT.finditer(text):
        raw, unit = (match["v"], match["u"]) if match["v"] else (match["v2"], "c")
        celsius = _to_celsius(float(raw), unit)
        if celsius is not None:
            values.append(celsius)
    for pattern in (_TEMP_CONTEXT, _TEMP_AFTER, _TEMP_BARE):
        for match in pattern.finditer(text):
            celsius = _to_celsius(float(match["v"]), None)
            if celsius is not None:
                values.append(celsius)
    if not values:
        return None
    return max(values, key=lambda v: abs(v - 37.0))


def _extreme(values: list[float], normal: float) -> float | None:
    return max(values, key=lambda v: abs(v - normal)) if values else None


_SPO2 = re.compile(
    r"(?:sats?|saturations?|spo2|sp02|o2|oxygen(?:\s+(?:level|sat\w*|reading))?|pulse\s?ox\w*|血氧(?:饱和度)?)"
    r"\D{0,14}?(?<![\d.])(?P<v>\d{2,3})(?:\s*%)?(?![\d.]|\s*/)"
)
_GLUCOSE = re.compile(
    r"(?:sugars?|glucose|bgl?|bm|blood\s+sugar|reading)\D{0,22}?(?<![\d.])(?P<v>\d{1,3}(?:\.\d+)?)\s*(?P<u>mmol|mg)?"
    r"|血糖[^\d，。,；;]{0,8}?(?P<zv>\d{1,3}(?:\.\d+)?|[一二两三四五六七八九十]+)\s*多?\s*(?P<zu>mmol|mg)?"
)
_BP = re.compile(r"(?<![\d.])(?P<s>\d{2,3})\s*/\s*(?P<d>\d{2,3})(?![\d.])")
_HR = re.compile(
    r"(?:pulse|heart\s*rate|hr|heartbeat|heart\s+(?:is\s+)?(?:racing|going|beating|pounding)(?:\s+at)?|心率|心跳|脉搏)"
    r"\D{0,12}?(?<![\d.])(?P<v>\d{2,3})(?![\d.%])|(?<![\d.])(?P<v2>\d{2,3})\s*(?:bpm|beats)"
    # A wearable's reading with no unit is a pulse (they show heart rate on the face).
    r"|(?:(?:apple|smart)\s*watch|watch\s+(?:says|said|shows|showed|reads|read|is\s+showing)|fitbit|garmin"
    r"|手表|手环)[^\d，。,；;]{0,20}?(?<![\d.])(?P<v3>\d{2,3})(?![\d.%]|\s*/|\s*(?:步|steps|kcal|cal|km|公里))"
)
_RR = re.compile(
    r"(?:breathing\s+rate|resp\w*\s+rate|rr)[^\d,;.]{0,10}?(?<![\d.])(?P<v>\d{1,3})(?![\d.])"
    r"|呼吸(?:频率)?[^\d，。,；;]{0,4}?(?P<v3>\d{1,3})\s*(?:次|/分)"
    r"|(?<![\d.])(?P<v2>\d{1,3})\s*breaths"
)


def measures(text: str) -> dict[str, float]:
    """The message's numbers under the names the knowledge base's lines use."""
    found: dict[str, float] = {}
    age = _age_months(text)
    if age is not None:
        found["age_months"] = round(age, 2)
        found["age_years"] = round(age / 12.0, 2)
    weeks = _pregnancy_weeks(text)
    if weeks is not None:
        found["pregnancy_weeks"] = weeks
    temperature = _temperature(text)
    if temperature is not None:
        found["temp_c"] = round(temperature, 1)
    spo2 = [float(m["v"]) for m in _SPO2.finditer(text) if 50 <= float(m["v"]) <= 100]
    if spo2:
        found["spo2"] = min(spo2)
    glucose = []
    for match in _GLUCOSE.finditer(text):
        raw = match["v"] or match["zv"]
        parsed = number(raw) if raw else None
        if parsed is None:
            continue
        value, unit = parsed, match["u"] or match["zu"]
        # Meters in China read mmol/L (up to "HI" at 33.3 or more); elsewhere a bare value over 35 is mg/dL.
        if unit == "mg" or (unit is None and value > (60 if match["zv"] else 35)):
            value /= 18.0
        if 0.5 <= value <= 60:
            glucose.append(value)
    extreme = _extreme(glucose, 6.0)
    if extreme is not None:
        found["glucose_mmol"] = round(extreme, 1)
    pressures = [
        (float(m["s"]), float(m["d"]))
        for m in _BP.finditer(text)
        if 60 <= float(m["s"]) <= 280 and 30 <= float(m["d"]) <= 180 and float(m["s"]) > float(m["d"])
    ]
    if pressures:
        sbp, dbp = max(pressures, key=lambda p: abs(p[0] - 120))
        found["sbp"], found["dbp"] = sbp, dbp
    rates = [float(v) for m in _HR.finditer(text) if 20 <= float(v := m["v"] or m["v2"] or m["v3"]) <= 300]
    extreme = _extreme(rates, 80.0)
    if extreme is not None:
        found["heart_rate"] = extreme
    breaths = [float(v) for m in _RR.finditer(text) if 4 <= float(v := m["v"] or m["v2"] or m["v3"]) <= 120]
    extreme = _extreme(breaths, 16.0)
    if extreme is not None:
        found["resp_rate"] = extreme
    return found
