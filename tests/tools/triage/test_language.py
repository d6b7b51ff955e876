"""Which messages the red-flag screen cannot read (tools.triage.language). The phrases are written for
this test; none comes from a triage evaluation set."""

from __future__ import annotations

import pytest

from tools.triage.language import language_name, unscreened_language


@pytest.mark.parametrize(
    ("text", "code"),
    [
        ("Tengo fiebre alta y me cuesta respirar desde ayer", "es"),
        ("Mon fils a de la fièvre et vomit depuis ce matin", "fr"),
        ("Ich habe seit gestern Abend starke Bauchschmerzen", "de"),
        ("Estou com falta de ar e tosse há três dias", "pt"),
        ("Мой отец упал и не может встать", "ru"),
        ("어제부터 머리가 너무 아파요", "ko"),
        ("昨日から頭がとても痛いです", "ja"),
    ],
)
def test_other_languages_are_named(text: str, code: str) -> None:
    assert unscreened_language(text) == code


@pytest.mark.parametrize(
    "text",
    [
        "I have had a sore throat and a runny nose since the weekend",
        "my toddler swallowed a button battery",
        "chest pain",  # too short to judge: left to the screen, never a false note
        "ok",
        "BP 150/95, HR 110",
        "",
        "12345 !!!",
        "我的孩子发烧两天了，吃不下东西",
        "dyspnoea on exertion, orthopnoea, bilateral ankle oedema",
    ],
)
def test_english_chinese_and_the_undecidable_are_left_to_the_screen(text: str) -> None:
    assert unscreened_language(text) is None


def test_a_script_the_screen_reads_none_of_is_unscreened_even_when_the_language_is_unclear() -> None:
    assert unscreened_language("שלום, יש לי כאב ראש חזק") not in (None, "en", "zh")
    assert language_name("es") == "Spanish" and "other than English" in language_name("xx")
