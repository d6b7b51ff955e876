"""Fixed texts the agent attaches to what it says, in the languages it answers in (en, zh)."""

from __future__ import annotations

DISCLAIMER = (
    "This is AI-generated information, not a diagnosis or medical advice. It may be wrong. "
    "Talk to a qualified clinician about your health; in an emergency call your local emergency number."
)
DISCLAIMERS = {
    "en": DISCLAIMER,
    "zh": (
        "以上内容由人工智能生成，不构成诊断或医疗建议，可能有误。"
        "请向合格的医生咨询；如遇紧急情况，请立即拨打当地急救电话。"
    ),
}

DEMO_WEIGHTS_NOTICE = (
    "Demo model: this server runs random demonstration weights, so the text above is meaningless. "
    "Point the service at the released HealthGPT weights for real answers."
)

# Red flags get this, never only a model answer. Deterministic: the same category, the same words.
EMERGENCY = {
    "en": (
        "What you describe can be a medical emergency ({category}). Call your local emergency number "
        "(911 / 112 / 999) now or go to the nearest emergency department. Do not wait for an online answer. "
        "If you are alone, unlock the door and tell someone nearby. Your care team has been notified."
    ),
    "zh": (
        "您描述的情况可能是医疗急症（{category}）。请立即拨打急救电话（120）或前往最近的急诊科，"
        "不要等待在线回复。如果您独自一人，请打开门并告诉身边的人。已通知您的医疗团队。"
    ),
}
# The triage categories (tools/triage.py CATEGORIES) in Chinese, for the emergency text.
CATEGORY_ZH = {
    "unresponsive": "意识丧失或无反应",
    "cardiac": "疑似心脏病发作",
    "breathing": "严重呼吸困难",
    "stroke": "疑似中风",
    "anaphylaxis": "疑似严重过敏反应",
    "pregnancy": "孕期出血或剧烈疼痛",
    "bleeding": "无法控制的出血",
    "gi_bleed": "呕血或黑色柏油样便",
    "overdose": "药物过量或中毒",
    "suicide": "自杀念头或自伤",
    "seizure": "持续或反复抽搐",
    "head_injury": "头部受伤伴意识丧失或危险征象",
    "thunderclap_headache": "突发剧烈（雷击样）头痛",
    "meningitis": "疑似脑膜炎",
    "sepsis": "疑似脓毒症",
    "infant_fever": "三个月以下婴儿发热",
}
CRISIS_LINES = {
    "en": "If you are thinking about harming yourself, you can also call or text a crisis line "
    "(988 in the US).",
    "zh": "如果您有伤害自己的想法，也可以拨打心理危机干预热线（如 400-161-9995 或 010-82951332）。",
}

PRELIMINARY_NOTICE = {
    "en": "PRELIMINARY AI read: not a report until a physician reviews and signs it.",
    "zh": "初步人工智能阅片结果：须经医生审核签字后方为正式报告。",
}

REFUSALS = {
    "admin_only": {
        "en": "That is an administrator function; your role cannot use it.",
        "zh": "这是管理员功能，您的角色无法使用。",
    },
    "physician_only": {
        "en": "Second reads and image tasks are for physicians.",
        "zh": "影像复核与图像任务仅供医生使用。",
    },
    "no_patient_data_for_admin": {
        "en": "Administrators manage feedback and adapters; consultations with patient data are not open "
        "to them.",
        "zh": "管理员负责反馈和适配器管理，不能访问含患者数据的问诊。",
    },
    "needs_study": {
        "en": "A second read needs a study: upload a DICOM file or name a study id.",
        "zh": "影像复核需要一个检查：请上传 DICOM 文件或指定检查编号。",
    },
}

POST_CHECK_ADVICE = {
    "en": "If your symptoms are severe or getting worse, seek in-person medical care promptly.",
    "zh": "如果症状严重或正在加重，请及时就医。",
}
