"""Urgency levels and condition categories: the vocabulary the screen answers in (and the agent speaks)."""

from __future__ import annotations

from tools.triage.knowledge import LEVELS, Level

__all__ = ["ADVICE", "CATEGORIES", "CATEGORIES_ZH", "EMERGENCY_CATEGORIES", "LEVELS", "Level"]

# Categories a condition belongs to: the first block can be emergencies, the second only same-day care.
CATEGORIES: dict[str, str] = {
    "cardiac": "possible heart attack or other heart emergency",
    "stroke": "possible stroke",
    "breathing": "severe difficulty breathing",
    "anaphylaxis": "possible anaphylaxis",
    "suicide": "suicidal thoughts, self-harm or a mental-health crisis",
    "overdose": "overdose or poisoning",
    "head_injury": "head injury with loss of consciousness or warning signs",
    "seizure": "prolonged, repeated or first seizure",
    "pregnancy": "pregnancy or after-birth emergency",
    "gi_bleed": "vomiting blood or black, tarry stools",
    "bleeding": "uncontrolled bleeding",
    "meningitis": "possible meningitis",
    "sepsis": "possible sepsis",
    "infant_fever": "fever in a baby under 3 months",
    "thunderclap_headache": "sudden, severe (thunderclap) headache",
    "unresponsive": "unconscious or unresponsive",
    "abdominal": "acute abdominal emergency",
    "diabetic": "diabetic emergency (very high or very low blood sugar)",
    "genitourinary": "testicular, penile or urinary emergency",
    "eye": "eye emergency",
    "injury": "serious injury",
    "spinal": "spinal cord or nerve-root emergency",
    "environmental": "heatstroke, hypothermia or near-drowning",
    "dehydration": "severe dehydration",
    "vascular": "acute blood-vessel emergency",
    # same-day care only
    "infection": "infection that needs a clinician today",
    "mental_health": "mental-health problem that needs attention",
    "musculoskeletal": "muscle, bone or joint problem",
    "skin": "skin problem",
    "ent": "ear, nose or throat problem",
    "urinary": "urinary problem",
    "other": "other problem",
}
# The categories an emergency can have (the first block above); the rest are same-day care only.
EMERGENCY_CATEGORIES: frozenset[str] = frozenset(list(CATEGORIES)[: list(CATEGORIES).index("infection")])

CATEGORIES_ZH: dict[str, str] = {
    "cardiac": "疑似心脏病发作或其他心脏急症",
    "stroke": "疑似中风",
    "breathing": "严重呼吸困难",
    "anaphylaxis": "疑似严重过敏反应",
    "suicide": "自杀念头、自伤或精神危机",
    "overdose": "药物过量或中毒",
    "head_injury": "头部受伤伴意识丧失或危险征象",
    "seizure": "持续、反复或首次抽搐",
    "pregnancy": "孕期或产后急症",
    "gi_bleed": "呕血或黑色柏油样便",
    "bleeding": "无法控制的出血",
    "meningitis": "疑似脑膜炎",
    "sepsis": "疑似脓毒症",
    "infant_fever": "三个月以下婴儿发热",
    "thunderclap_headache": "突发剧烈（雷击样）头痛",
    "unresponsive": "意识丧失或无反应",
    "abdominal": "急腹症",
    "diabetic": "糖尿病急症（血糖过高或过低）",
    "genitourinary": "睾丸、阴茎或泌尿急症",
    "eye": "眼部急症",
    "injury": "严重外伤",
    "spinal": "脊髓或神经根急症",
    "environmental": "中暑、低体温或溺水",
    "dehydration": "严重脱水",
    "vascular": "急性血管急症",
    "infection": "需要当天就诊的感染",
    "mental_health": "需要关注的心理问题",
    "musculoskeletal": "肌肉、骨骼或关节问题",
    "skin": "皮肤问题",
    "ent": "耳鼻喉问题",
    "urinary": "泌尿问题",
    "other": "其他问题",
}

# What each level asks the person to do, as nurse lines and symptom checkers say it.
ADVICE: dict[str, dict[str, str]] = {
    "emergency": {
        "en": "Call your local emergency number now or go to the nearest emergency department.",
        "zh": "请立即拨打急救电话（120）或前往最近的急诊科。",
    },
    "urgent": {
        "en": "This needs to be seen by a clinician today: contact your doctor for a same-day appointment, "
        "an "
        "urgent care centre or a nurse line. If it gets worse, call emergency services.",
        "zh": "这需要今天就看医生：请联系您的医生预约当天就诊，或前往急诊/门诊。如果加重，请拨打急救电话。",
    },
    "routine": {
        "en": "Book an appointment with your doctor in the next few days.",
        "zh": "请在近几天内预约医生就诊。",
    },
    "self_care": {
        "en": "This can usually be looked after at home or with a pharmacist's advice.",
        "zh": "通常可以在家护理或咨询药剂师。",
    },
}
