"""Deterministic screens around the model: prompt injection, red flags (language: tools.triage.text).

Injection screening never *grants* anything: roles and routes come from authentication and the route
table alone. It flags text that tries to steer the model or the workflow ("ignore previous
instructions", "you are an admin now", "approve this read"), so the attempt is recorded, the text is
passed to the model only as quoted patient content, and no state changes because of it.
"""

from __future__ import annotations

import re

from tools.triage import TriageResult, triage_rules

_INJECTION = [
    (
        "override",
        r"\b(?:ignore|disregard|forget)\b(?:\s+\w+){0,3}\s+(?:instructions?|rules?|prompts?|guidelines?)",
    ),
    (
        "role_claim",
        r"\byou\s+are\s+(?:now\s+)?(?:an?\s+)?(?:admin(?:istrator)?|root|system|developer|physician|doctor)\b",
    ),
    ("role_claim", r"\b(?:i\s+am|i'm)\s+(?:now\s+)?(?:an?\s+)?(?:admin(?:istrator)?|root|superuser)\b"),
    (
        "workflow",
        r"\b(?:approve|sign(?:\s+off)?|finali[sz]e|mark\s+as\s+final)\b(?:\s+\w+){0,3}\s+(?:read|report|study)\b",
    ),
    ("system_prompt", r"\b(?:system\s+prompt|developer\s+mode|jailbreak|do\s+anything\s+now)\b"),
    (
        "data_grab",
        r"\b(?:show|list|give|dump)\b(?:\s+\w+){0,3}\s+(?:all|other|every)\s+(?:patients?|users?|records?)\b",
    ),
    ("override", r"忽略(?:之前|以上|前面)?的?(?:所有)?(?:指令|规则|提示)"),
    ("role_claim", r"你(?:现在)?是(?:管理员|系统|医生)|我(?:现在)?是管理员"),
    ("workflow", r"(?:批准|签署|签发|确认)(?:这个|这份|该)?(?:报告|阅片|检查)"),
]
_INJECTION_RX = [(kind, re.compile(pattern, re.IGNORECASE)) for kind, pattern in _INJECTION]


def injection_findings(text: str) -> list[str]:
    """Which steering attempts ``text`` contains, as ``kind: "matched text"``; empty when none."""
    found = []
    for kind, pattern in _INJECTION_RX:
        match = pattern.search(text)
        if match:
            found.append(f'{kind}: "{match.group(0)[:80]}"')
    return found


def screen_output(text: str) -> TriageResult:
    """A model's answer, by the rules only (it speaks of symptoms in general, not of the user)."""
    return triage_rules(text)


def quote_for_model(text: str) -> str:
    """User text as content to answer, not instructions to follow."""
    return f'The patient writes: "{text.strip()}"'
