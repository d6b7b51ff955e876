"""Numbers are parsed, not enumerated: any count, any temperature scale, ages in days to years."""

from __future__ import annotations

import pytest

from tools.triage.numbers import counts_near, durations, measures
from tools.triage.text import normalise


@pytest.mark.parametrize(
    ("text", "celsius"),
    [
        ("her temp is 39.4c", 39.4),
        ("temperature 102F since last night", 38.9),
        ("fever of 103 degrees fahrenheit", 39.4),
        ("thermometer says 38.2", 38.2),
        ("he has a fever, 101.5", 38.6),
        ("孩子发烧39度", 39.0),
        ("体温38.5℃", 38.5),
        ("烧到40度了", 40.0),
        ("my temperature is 35.0", 35.0),
        ("newborn feels hot, 38.1 on the thermometer", 38.1),
        ("2 month old with 100.8 temp", 38.2),
    ],
)
def test_temperatures_in_either_scale(text: str, celsius: float) -> None:
    assert measures(normalise(text))["temp_c"] == celsius


@pytest.mark.parametrize(
    ("text", "months"),
    [
        ("my 6-week-old baby", 1.38),
        ("she is 3 months old", 3.0),
        ("my ten day old", 0.33),
        ("I'm 72 and diabetic", 864.0),
        ("72yo male with chest pain", 864.0),
        ("34f, pregnant", 408.0),
        ("a two-year-old boy", 24.0),
        ("宝宝3个月大", 3.0),
        ("我妈今年78岁", 936.0),
        ("出生10天的宝宝", 0.33),
        ("newborn is not feeding", 0.5),
        ("宝宝一个半月，体温38.2", 1.5),
        ("宝宝才六周，发烧了", 1.38),
        ("两个月的婴儿发高烧", 2.0),
        ("baby is 11 weeks", 2.53),
    ],
)
def test_ages_from_days_to_years(text: str, months: float) -> None:
    assert measures(normalise(text))["age_months"] == pytest.approx(months, abs=0.01)


def test_an_age_at_another_time_is_not_the_age_now() -> None:
    assert "age_months" not in measures(normalise("I had asthma when I was 5"))


@pytest.mark.parametrize(
    ("text", "weeks"),
    [("I'm 34 weeks pregnant", 34), ("pregnant, at 28+3 weeks", 28), ("怀孕32周", 32), ("孕20周", 20)],
)
def test_pregnancy_weeks(text: str, weeks: float) -> None:
    assert measures(normalise(text))["pregnancy_weeks"] == weeks


def test_a_bare_week_count_is_a_gestation_only_in_a_pregnancy_context() -> None:
    assert measures(normalise("29 weeks with my second, ankles puffy"))["pregnancy_weeks"] == 29
    assert measures(normalise("31 weeks now, midwife says the bump is big"))["pregnancy_weeks"] == 31
    assert "pregnancy_weeks" not in measures(normalise("12 weeks of physio for my knee and it still aches"))


def test_vital_signs() -> None:
    found = measures(normalise("sats 88% on the pulse ox, bp 85/50, pulse 130, breathing rate 32"))
    assert (found["spo2"], found["sbp"], found["dbp"], found["heart_rate"], found["resp_rate"]) == (
        88, 85, 50, 130, 32,
    )  # fmt: skip
    assert measures(normalise("血氧89，血压180/110，心率120"))["spo2"] == 89


@pytest.mark.parametrize(
    ("text", "rate"),
    [
        ("my smartwatch has been showing 176 for the last half hour", 176),
        ("the fitbit reads 38 and I feel faint", 38),
        ("手环上显示165，一直降不下来", 165),
    ],
)
def test_a_wearable_reading_without_a_unit_is_a_pulse(text: str, rate: float) -> None:
    assert measures(normalise(text))["heart_rate"] == rate


@pytest.mark.parametrize(
    "text", ["my watch says 8000 steps today", "手表显示今天走了12000步", "watch says 120/80"]
)
def test_other_wearable_numbers_are_not_a_pulse(text: str) -> None:
    assert "heart_rate" not in measures(normalise(text))


@pytest.mark.parametrize(
    ("text", "mmol"),
    [
        ("blood sugar 2.6 mmol/l", 2.6),
        ("glucose 450 mg/dl", 25.0),
        ("sugar reading was 32", 32.0),
        ("血糖2.8", 2.8),
        ("his sugars have been over 25 all day", 25.0),
        ("血糖二十多", 20.0),
    ],
)
def test_blood_sugar_in_either_unit(text: str, mmol: float) -> None:
    assert measures(normalise(text))["glucose_mmol"] == mmol


@pytest.mark.parametrize(
    ("sentence", "finding", "count"),
    [
        ("he has had 4 seizures today", "seizures", 4),
        ("she had 11 seizures since noon", "seizures", 11),
        ("vomited six times this morning", "vomited", 6),
        ("this is his third seizure", "seizure", 3),
        ("孩子今天抽了3次", "抽了", 3),
        ("抽了十二次", "抽了", 12),
    ],
)
def test_counts_are_parsed(sentence: str, finding: str, count: float) -> None:
    start = sentence.index(finding)
    assert counts_near(sentence, start, start + len(finding)) == count


@pytest.mark.parametrize(
    ("sentence", "minutes"),
    [
        ("the seizure lasted 7 minutes", 7),
        ("fitting for over 10 mins", 10),
        ("fever for 5 days", 7200),
        ("no wet nappy for 12 hours", 720),
        ("抽了六分钟", 6),
        ("发烧三天了", 4320),
        ("pain since yesterday", 1080),
    ],
)
def test_durations_are_parsed(sentence: str, minutes: float) -> None:
    assert max(durations(normalise(sentence))) == minutes


@pytest.mark.parametrize(
    ("text", "years"), [("my dad is 67 and diabetic", 67), ("my wife, who is 44, fainted", 44)]
)
def test_the_age_of_the_person_written_about(text: str, years: float) -> None:
    assert measures(normalise(text))["age_years"] == years


def test_a_reading_is_not_an_age() -> None:
    assert "age_years" not in measures(normalise("my temperature was 39 this morning"))


@pytest.mark.parametrize("sentence", ["had a short seizure an hour ago", "两天前抽了一下"])
def test_a_time_ago_is_not_a_duration(sentence: str) -> None:
    assert durations(normalise(sentence)) == []


def test_a_weight_is_not_a_temperature() -> None:
    assert "temp_c" not in measures(normalise("she weighs 38.5 kg"))
