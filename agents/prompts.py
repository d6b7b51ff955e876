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

# In place of the AI disclaimer on text a physician wrote or signed (Provenance.author).
AUTHOR_NOTES = {
    "physician": {
        "en": "Written by a physician.",
        "zh": "本报告由医生撰写。",
    },
    "ai+physician": {
        "en": "Drafted by AI; reviewed, approved and signed by a physician.",
        "zh": "本报告由人工智能起草，经医生审核批准并签字。",
    },
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

# The history route's answer (agents.nodes.history); study descriptions and reads stay as recorded.
HISTORY = {
    "en": {
        "no_patient": "This conversation concerns no patient; there is no history to show.",
        "summary": "{consultations} consultation(s), {studies} study(ies) on record.",
        "study": "- study {id}: {modality} {description}",
        "image": "image",
        "signed": "; signed read: {text}",
    },
    "zh": {
        "no_patient": "此对话不涉及任何患者，没有可显示的病史。",
        "summary": "记录中有 {consultations} 次问诊、{studies} 项检查。",
        "study": "- 检查 {id}：{modality} {description}",
        "image": "影像",
        "signed": "；已签署的阅片报告：{text}",
    },
}

POST_CHECK_ADVICE = {
    "en": "If your symptoms are severe or getting worse, seek in-person medical care promptly.",
    "zh": "如果症状严重或正在加重，请及时就医。",
}

# Said under an answer to a message in a language the red-flag screen does not read (tools.triage.language).
UNSCREENED_NOTICE = (
    "This message looks like {language}. The safety check here reads only English and Chinese, so it was "
    "not checked for warning signs. If this may be an emergency, call your local emergency number (for "
    "example 112, 911 or 999) now. You can also write in English or Chinese."
)
