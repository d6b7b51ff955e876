"""What does a message ask for? Nearest-neighbour intent classification over labelled exemplars.

Each intent has a few dozen short exemplars (English and Chinese). A message is compared with all of
them and each intent scores the mean of its ``k`` best similarities; the best intent wins, and a
softmax over the intent scores gives a confidence. Similarity blends two signals by how Chinese the
message is: all-MiniLM-L6-v2 cosine for English (the model cannot read Chinese) and character n-gram
TF-IDF cosine for Chinese. Everything is deterministic: same text, same answer.

Safety is not decided here: red flags are :mod:`tools.triage`'s job and run on every message.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from typing import Literal, get_args

import numpy as np
from pydantic import BaseModel, Field

from tools import embeddings

Intent = Literal["consult", "second_read", "image_task", "history", "admin", "small_talk"]
INTENTS: tuple[Intent, ...] = get_args(Intent)

DESCRIPTIONS: dict[Intent, str] = {
    "consult": "a health question or symptoms, possibly about an uploaded picture",
    "second_read": "a clinician asking for a (preliminary or second) read of a study or report",
    "image_task": "an image operation: modality conversion, super-resolution, reconstruction, generation",
    "history": "the user's own records: past consultations, results, reports, medications",
    "admin": "accounts, access, adapters, fine-tuning, feedback review, data export or deletion",
    "small_talk": "greetings, thanks, chit-chat, questions about the assistant itself",
}

EXEMPLARS: dict[Intent, tuple[str, ...]] = {
    "consult": (
        "I've had a dry cough for a week, what should I do?",
        "my knee hurts when I climb stairs",
        "is it safe to take ibuprofen with my blood pressure pills?",
        "what could cause a rash on my arms?",
        "I have a headache and a runny nose",
        "what does this x-ray show?",
        "can you explain what this spot on my skin might be?",
        "my child has a fever, how much paracetamol can I give?",
        "how can I lower my cholesterol?",
        "I feel tired all the time and can't sleep",
        "is this mole something to worry about?",
        "what are the side effects of metformin?",
        "my stomach hurts after eating",
        "should I see a doctor about my back pain?",
        "what does a high white blood cell count mean?",
        "我咳嗽一个星期了，怎么办？",
        "头疼流鼻涕，需要吃药吗？",
        "这张片子显示什么问题？",
        "布洛芬和降压药能一起吃吗？",
        "孩子发烧了，该怎么处理？",
        "最近总是失眠，有什么办法？",
        "my son has an ear infection, does he need antibiotics?",
        "is a heart rate of 100 normal when resting?",
        "I sprained my wrist, should I use ice or heat?",
        "what vaccines does an adult need?",
        "I'm pregnant, can I take this medicine?",
        "why do my joints ache in the morning?",
        "胃疼反酸是怎么回事？",
        "血糖偏高要注意什么？",
    ),
    "second_read": (
        "please give a preliminary read of this chest CT",
        "I'd like a second opinion on this MRI of the knee",
        "review this study and draft a report for me to sign",
        "can you double-check the radiologist's findings on this scan?",
        "read this chest radiograph and list the findings",
        "draft an impression for this brain MRI",
        "the report says no fracture, do you agree after looking at the images?",
        "compare this CT with the prior study and describe interval change",
        "prelim read please: abdominal CT with contrast, query appendicitis",
        "second read of this mammogram, BI-RADS category?",
        "look at this pathology slide and give me your assessment",
        "write up the findings for this ultrasound for my review",
        "请帮我出一份这张胸部CT的初步报告",
        "这个核磁共振，请给个第二意见",
        "复核一下放射科的报告结论",
        "帮我阅片并写出影像所见",
        "对比上次的CT，描述一下变化",
        "give me your interpretation of this spine MRI for my report",
        "as the reporting radiologist I want a draft read of this CT",
        "check these x-ray images for a fracture and summarise the findings",
        "does this CT show a pulmonary embolism? draft the impression",
        "请给这张腰椎核磁写个初步诊断",
    ),
    "image_task": (
        "convert this CT scan to an MRI",
        "turn this MRI into a CT image",
        "upscale this low resolution x-ray",
        "make this image sharper with super-resolution",
        "reconstruct this image",
        "generate an image of a chest x-ray with pneumonia",
        "denoise this scan",
        "enhance the resolution of this MRI slice",
        "synthesize a T2 image from this T1",
        "create a picture of a healthy liver ultrasound",
        "can you increase the resolution of this picture?",
        "translate this CT into MRI style",
        "把这张CT转换成MRI",
        "提高这张片子的分辨率",
        "把这张图像重建一下",
        "生成一张肺炎的胸片",
        "把核磁共振图像转成CT",
        "帮我把这张图变清晰",
        "change this CT so it looks like an MRI",
        "remove the noise from this x-ray",
        "render a synthetic knee MRI",
        "图像去噪",
    ),
    "history": (
        "what did my last blood test show?",
        "show me my previous consultations",
        "when was my last MRI?",
        "what medications do I have on record?",
        "what did the doctor say at my last visit?",
        "list my past lab results",
        "find my report from last year",
        "have I had a CT scan before?",
        "what was my cholesterol last time?",
        "show my history of blood pressure readings",
        "what did you tell me about my cough last week?",
        "pull up my discharge summary",
        "我上次的验血结果是什么？",
        "查一下我以前的就诊记录",
        "我去年做过核磁共振吗？",
        "给我看看我之前的检查报告",
        "我上次问你的问题你是怎么回答的？",
        "我的用药记录有哪些？",
        "did I have an x-ray at this clinic before?",
        "open my old CT report",
        "what did we discuss in our earlier conversations?",
        "my previous prescriptions",
        "我以前拍过胸片吗？",
        "打开我之前的报告",
    ),
    "admin": (
        "reset my password",
        "add a new physician account",
        "promote the new comprehension adapter to champion",
        "what is the status of the fine-tuning job?",
        "delete my account and all my data",
        "export all my records",
        "change my email address",
        "show the feedback from this week",
        "who has access to my records?",
        "add patient 42 to doctor Lee's care team",
        "roll back the generation adapter",
        "verify the audit log",
        "revoke this user's token",
        "start a fine-tune on the latest feedback",
        "重置我的密码",
        "删除我的账号和所有数据",
        "导出我的全部记录",
        "谁能看到我的病历？",
        "查看微调任务的进度",
        "给李医生添加一个新病人",
        "show me the user feedback summary",
        "disable this account",
        "which adapter is in production?",
        "change the role of user 12 to physician",
        "查看用户反馈",
        "修改我的手机号",
    ),
    "small_talk": (
        "hello",
        "hi there, how are you?",
        "thank you so much",
        "good morning!",
        "who are you?",
        "what can you do?",
        "tell me a joke",
        "bye, see you later",
        "that was helpful, thanks",
        "are you a robot?",
        "nice to meet you",
        "good night",
        "你好",
        "谢谢你",
        "早上好",
        "你是谁？",
        "你能做什么？",
        "再见",
        "are you a doctor or an AI?",
        "hey",
        "ok thanks",
        "haha",
        "嘿",
        "哈喽",
        "晚上好",
        "拜拜",
        "好的，谢谢",
        "你是真人吗？",
    ),
}


class IntentResult(BaseModel):
    intent: Intent
    confidence: float = Field(ge=0, le=1, description="Softmax share of the winning intent.")
    runner_up: Intent
    runner_up_confidence: float = Field(ge=0, le=1)
    scores: dict[Intent, float] = Field(description="Mean of the k best similarities, per intent.")


class IntentClassifier:
    """k-nearest-neighbour scores over exemplars; built once (it embeds every exemplar)."""

    def __init__(
        self, exemplars: Mapping[Intent, Sequence[str]] = EXEMPLARS, *, k: int = 3, temperature: float = 0.05
    ) -> None:
        if set(exemplars) != set(INTENTS) or any(len(texts) == 0 for texts in exemplars.values()):
            raise ValueError(f"exemplars must cover every intent: {', '.join(INTENTS)}")
        if k < 1 or temperature <= 0:
            raise ValueError("k must be >= 1 and temperature > 0")
        self.k, self.temperature = k, temperature
        self._texts = [text for intent in INTENTS for text in exemplars[intent]]
        self._labels = np.array([INTENTS.index(intent) for intent in INTENTS for _ in exemplars[intent]])
        self._dense = embeddings.embed(self._texts)
        self._ngrams = embeddings.NgramVectorizer(self._texts)
        self._sparse = self._ngrams.transform(self._texts)

    def _similarities(self, texts: Sequence[str]) -> np.ndarray:
        # English reads best through the model, Chinese through n-grams; mixed text gets some of each.
        weight = np.array([1.0 - embeddings.cjk_fraction(t) for t in texts], dtype=np.float32)[:, None]
        dense = embeddings.embed(texts) @ self._dense.T
        sparse = self._ngrams.transform(texts) @ self._sparse.T
        return weight * dense + (1.0 - weight) * sparse

    def classify_many(self, texts: Sequence[str]) -> list[IntentResult]:
        if not texts:
            return []
        similarities = self._similarities(texts)
        results = []
        for row in similarities:
            scores = np.array([self._top_k_mean(row[self._labels == i]) for i in range(len(INTENTS))])
            shares = np.exp((scores - scores.max()) / self.temperature)
            shares /= shares.sum()
            first, second = np.argsort(-scores, kind="stable")[:2]  # stable: ties go to the earlier intent
            results.append(
                IntentResult(
                    intent=INTENTS[first],
                    confidence=round(float(shares[first]), 4),
                    runner_up=INTENTS[second],
                    runner_up_confidence=round(float(shares[second]), 4),
                    scores={intent: round(float(s), 4) for intent, s in zip(INTENTS, scores, strict=True)},
                )
            )
        return results

    def classify(self, text: str) -> IntentResult:
        return self.classify_many([text])[0]

    def _top_k_mean(self, values: np.ndarray) -> float:
        k = min(self.k, len(values))
        return float(np.sort(values)[-k:].mean())


_default: IntentClassifier | None = None
_default_lock = threading.Lock()


def default_classifier() -> IntentClassifier:
    """The classifier over :data:`EXEMPLARS`, built on first use (thread-safe)."""
    global _default
    if _default is None:
        with _default_lock:
            if _default is None:
                _default = IntentClassifier()
    return _default


def classify_intent(text: str) -> IntentResult:
    """The intent of one message, with its confidence and the runner-up."""
    return default_classifier().classify(text)
