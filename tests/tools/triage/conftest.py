"""A small knowledge base written for the mechanism's tests, so they do not depend on the clinical one."""

from __future__ import annotations

from pathlib import Path

import pytest

from tools.triage.knowledge import KB_DIR, KnowledgeBase, load_kb

FINDINGS = r"""
chest_pain:
  kind: symptom
  label: {en: chest pain, zh: 胸痛}
  en: ['chest ~2 (pain|tight\w*|pressure)', '(pressure|tightness) (in|on) ~2 chest']
  zh: ['胸 ~2 (痛|疼|闷)']
  examples: {en: [my chest feels tight], zh: [胸口很痛]}
sweating:
  kind: symptom
  label: {en: sweating, zh: 出汗}
  en: ['(sweat\w*|clammy)']
  zh: ['(出汗|冷汗)']
seizure:
  kind: symptom
  label: {en: seizure, zh: 抽搐}
  en: ['(seizures?|fits?)']
  zh: ['(抽搐|抽了)']
fever:
  kind: symptom
  label: {en: fever, zh: 发烧}
  stated_as: temp_c >= 38
  en: ['(fever|feverish|temperature)']
  zh: ['(发烧|发热|体温)']
diabetes:
  kind: risk
  label: {en: diabetes, zh: 糖尿病}
  en: ['diabet\w*']
  zh: ['糖尿病']
gym_strain:
  kind: explain
  label: {en: after exercise strain, zh: 运动拉伤}
  en: ['(gym|lifting|press on it)']
  zh: ['(健身|拉伤)']
"""

CONDITIONS = """
- id: heart_attack_test
  name: {en: possible heart attack, zh: 疑似心梗}
  category: cardiac
  sources: ["NHS: Heart attack"]
  emergency:
    - chest_pain + sweating
    - chest_pain + diabetes + age_years >= 40
  urgent:
    - chest_pain
  explained_by:
    - gym_strain
  tests:
    - {text: "chest pain and sweating", level: emergency}
- id: seizure_test
  name: {en: seizures, zh: 抽搐}
  category: seizure
  sources: ["NICE CKS: epilepsy"]
  emergency:
    - seizure + count(seizure) >= 2
    - seizure + duration(seizure) >= 5min
  urgent:
    - seizure
- id: infant_fever_test
  name: {en: fever in a young baby, zh: 小婴儿发热}
  category: infant_fever
  sources: ["NICE NG143"]
  emergency:
    - age_months < 3 + temp_c >= 38
  routine:
    - fever
"""


@pytest.fixture(scope="session")
def small_kb(tmp_path_factory: pytest.TempPathFactory) -> KnowledgeBase:
    root: Path = tmp_path_factory.mktemp("kb")
    (root / "findings").mkdir()
    (root / "conditions").mkdir()
    (root / "findings" / "test.yaml").write_text(FINDINGS, "utf-8")
    (root / "conditions" / "test.yaml").write_text(CONDITIONS, "utf-8")
    (root / "context.yaml").write_text((KB_DIR / "context.yaml").read_text("utf-8"), "utf-8")
    return load_kb(root)
