"""De-identification: the Basic Profile over pydicom's whole test corpus, consistency of pseudonyms, UIDs
and dates, the burned-in text policy, folders and the CLI."""

from __future__ import annotations

import copy
import io
import json
import os
import platform
import re
import shutil
import stat
from collections import Counter
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
import typer
from pydicom.data import get_testdata_file, get_testdata_files
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.errors import InvalidDicomError
from pydicom.sequence import Sequence
from pydicom.tag import BaseTag
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from typer.testing import CliRunner

from serving.cli.dicom import dicom_app
from tools.deid import (
    DUMMY_DA,
    DUMMY_DT,
    DUMMY_TEXT,
    DUMMY_TM,
    IMPLEMENTATION_CLASS_UID,
    BlankRegion,
    BurnedInAnnotationError,
    DeidOptions,
    DeidRefused,
    deidentify,
    deidentify_tree,
    encode_dicom,
    load_or_create_key,
    remap_uid,
)
from tools.deid_profile import BASIC_PROFILE, MODIFIED_DATES_OPTION

KEY = b"test-deid-key-0123456789abcdef"
OTHER_KEY = b"another-deid-key-9876543210fedcba"
BLANK = DeidOptions(burned_in="blank")
RESULTS = Path(__file__).resolve().parents[2] / "bench" / "results" / "deid-corpus.json"

# What the output must show for each table code (our resolution of the compound codes, see tools.deid).
EXPECTED = {"X": "X", "Z": "Z", "D": "D", "U": "U", "X/Z": "Z", "X/D": "D", "Z/D": "D", "X/Z/D": "D"}
EXPECTED["X/Z/U*"] = "K"
DUMMIES = {DUMMY_TEXT, DUMMY_DA, DUMMY_DT, DUMMY_TM, "0", "000D", str(bytes(8))}
PATIENT_TAGS = (0x00100010, 0x00100020)


def _read(path: Path) -> Dataset | None:
    """pydicom's reading as a user would try it: strict, then forced; None if it cannot be read at all."""
    try:
        return pydicom.dcmread(path)
    except InvalidDicomError:
        pass
    except Exception:  # noqa: BLE001 - the corpus holds deliberately broken files
        return None
    try:
        ds = pydicom.dcmread(path, force=True)
        tags = list(ds.keys())
    except Exception:  # noqa: BLE001
        return None
    # A forced read parses anything (README.txt, JSON...): insist on some identification elements.
    return ds if any(0x00080000 <= tag < 0x00210000 for tag in tags) else None


def _encodable(ds: Dataset) -> bool:
    try:
        encode_dicom(ds)
    except Exception:  # noqa: BLE001
        return False
    return True


def _element(ds: Dataset, tag: int) -> Any:
    """The element, or None when absent; raises when its value cannot be parsed."""
    return ds[tag] if tag in ds else None


def _expected(tag: int, vr: str) -> str:
    if tag in PATIENT_TAGS:
        return "D"
    if vr in ("DA", "DT", "TM") and tag in MODIFIED_DATES_OPTION:
        return "changed"
    return EXPECTED[BASIC_PROFILE[tag]]


def _as_text(value: Any) -> list[str]:
    values = value if isinstance(value, list | tuple | pydicom.multival.MultiValue) else [value]
    return [str(v) for v in values]


def _check_element(elem: Any, new: Any, action: str) -> str | None:
    """Why ``new`` (the output element) still keeps what ``elem`` held, or None if it does not."""
    if action == "X":
        return None if new is None else "still present"
    if new is None:
        return "removed, expected to stay (validity)"
    if elem.VR == "SQ":
        if action == "Z":
            return None if len(new.value) == 0 else "sequence not emptied"
        return None if len(new.value) == len(elem.value) else "items lost"
    if action == "Z":
        return None if new.is_empty else f"not emptied: {new.value!r}"
    if new.is_empty:
        return "emptied, expected a value"
    before, after = _as_text(elem.value), _as_text(new.value)
    if action == "U":
        kept = [a for a, b in zip(after, before, strict=True) if a == b or not a.startswith("2.25.")]
        return f"UID kept: {kept}" if kept else None
    if after == before and not set(after) <= DUMMIES:
        return f"value kept: {after!r}"
    return None


def _check_tree(
    original: Dataset, output: Dataset, stats: Counter[str], problems: list[str], where: str
) -> None:
    """Every table Attribute of ``original`` (at any depth) lost its value in ``output``."""
    for tag in list(original.keys()):
        tag = BaseTag(tag)
        if tag.is_private or tag.group in (0x0000, 0x0002) or tag.element == 0:
            continue
        try:
            elem = original[tag]
        except Exception:  # noqa: BLE001 - unparseable in the input: it must simply be gone
            if tag in BASIC_PROFILE and tag in output:
                problems.append(f"{where}{tag}: unparseable value kept")
            continue
        new = _element(output, tag)
        if tag in BASIC_PROFILE and not elem.is_empty:
            stats["attributes_checked"] += 1
            why = _check_element(elem, new, _expected(tag, elem.VR))
            if why:
                problems.append(f"{where}{elem.keyword or tag}: {why}")
        if elem.VR == "SQ" and new is not None and len(new.value) == len(elem.value):
            for index, (item, new_item) in enumerate(zip(elem.value, new.value, strict=True)):
                _check_tree(item, new_item, stats, problems, f"{where}{elem.keyword}[{index}].")


def _foreign_tags(ds: Dataset) -> list[str]:
    """Private, curve and overlay tags anywhere in ``ds``."""
    found = []
    for tag in ds.keys():
        tag = BaseTag(tag)
        if tag.is_private or 0x5000 <= tag.group <= 0x50FF or 0x6000 <= tag.group <= 0x60FF:
            found.append(str(tag))
        elif ds[tag].VR == "SQ":
            for item in ds[tag].value:
                found += _foreign_tags(item)
    return found


def _blank_mask(ds: Dataset, shape: tuple[int, ...], regions: tuple[BlankRegion, ...]) -> np.ndarray:
    rows, columns = int(ds.Rows), int(ds.Columns)
    mask = np.zeros((rows, columns), dtype=bool)
    for region in regions:
        r0, r1, c0, c1 = region.bounds(rows, columns)
        mask[r0:r1, c0:c1] = True
    if int(ds.get("SamplesPerPixel") or 1) > 1:
        mask = mask[:, :, None]
    return np.broadcast_to(mask, shape)


def _check_pixels(
    original: Dataset, reread: Dataset, blanked: bool, stats: Counter[str], problems: list[str]
) -> None:
    if "PixelData" not in original:
        return
    try:
        before = original.pixel_array
    except Exception:  # noqa: BLE001 - truncated, unsupported codecs: nothing to compare
        stats["pixels_undecodable"] += 1
        return
    after = reread.pixel_array
    if before.shape != after.shape:
        problems.append(f"pixel shape {before.shape} -> {after.shape}")
    elif not blanked:
        stats["pixels_identical"] += 1
        if not np.array_equal(before, after):
            problems.append("pixels changed")
    else:
        stats["pixels_blanked"] += 1
        mask = _blank_mask(original, before.shape, BLANK.blank_regions)
        if not np.array_equal(before[~mask], after[~mask]):
            problems.append("pixels changed outside the blanked regions")
        if len(np.unique(after[mask])) != 1:
            problems.append("blanked regions are not uniform")


@pytest.mark.filterwarnings("ignore")  # the corpus is full of deliberately malformed values
def test_basic_profile_over_the_pydicom_corpus() -> None:
    stats: Counter[str] = Counter()
    problems: list[str] = []
    refusals: Counter[str] = Counter()
    listed = get_testdata_files()
    for name in listed:
        path = Path(name)
        if not path.is_file():
            continue  # get_testdata_files() also lists the folders of the DICOMDIR tests
        stats["files"] += 1
        original = _read(path)
        if original is None:
            stats["unreadable"] += 1
            continue
        snapshot = copy.deepcopy(original)
        try:
            result = deidentify(original, key=KEY, options=BLANK)
        except DeidRefused as exc:
            refusals[type(exc).__name__] += 1
            continue
        if _encodable(snapshot):  # some corpus files are not even writable as read
            assert encode_dicom(snapshot) == encode_dicom(original), f"{path.name}: the input was modified"
        reread = pydicom.dcmread(io.BytesIO(encode_dicom(result.dataset)), force=True)
        stats["files_checked"] += 1
        file_problems: list[str] = []
        _check_tree(original, reread, stats, file_problems, "")
        file_problems += [f"foreign tag {t}" for t in _foreign_tags(reread)]
        if reread.PatientIdentityRemoved != "YES" or reread.file_meta.ImplementationClassUID != (
            IMPLEMENTATION_CLASS_UID
        ):
            file_problems.append("not stamped")
        if (
            "SOPInstanceUID" in reread
            and reread.file_meta.MediaStorageSOPInstanceUID != reread.SOPInstanceUID
        ):
            file_problems.append("file meta SOP Instance UID differs from the dataset's")
        _check_pixels(original, reread, result.report.burned_in == "blanked", stats, file_problems)
        problems += [f"{path.name}: {p}" for p in file_problems]
    figures = {
        "benchmark": "deid-corpus",
        "corpus": f"pydicom {pydicom.__version__} get_testdata_files() (local files only)",
        "options": BLANK.model_dump(mode="json", include={"burned_in", "retain_modified_dates"}),
        "machine": {"platform": platform.platform(), "python": platform.python_version()},
        "paths_listed": len(listed),
        "files": stats["files"],
        "files_checked": stats["files_checked"],
        "files_unreadable": stats["unreadable"],
        "files_refused": dict(refusals),
        "attributes_checked": stats["attributes_checked"],
        "violations": len(problems),
        "pixels_identical": stats["pixels_identical"],
        "pixels_blanked_in_bands_only": stats["pixels_blanked"],
        "pixels_undecodable_skipped": stats["pixels_undecodable"],
    }
    if os.environ.get("HEALTHAGENT_RECORD_BENCH") == "1":  # a test run never rewrites recorded figures
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(json.dumps(figures, indent=2) + "\n")
    print(json.dumps(figures, indent=2))
    assert not problems, "\n".join(problems[:40])
    assert stats["files_checked"] >= 150 and stats["attributes_checked"] >= 1000
    assert stats["pixels_identical"] >= 40 and stats["pixels_blanked"] >= 20


def test_the_corpus_check_catches_an_untouched_file() -> None:
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    problems: list[str] = []
    _check_tree(ds, ds, Counter(), problems, "")
    assert any(p.startswith("PatientName") for p in problems) and any("UID kept" in p for p in problems)
    assert _foreign_tags(ds)  # CT_small carries private tags


# ---------------------------------------------------------------------------------------------- consistency


def _ct(**changes: Any) -> Dataset:
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    for keyword, value in changes.items():
        setattr(ds, keyword, value)
    return ds


def _moment(ds: Dataset, prefix: str) -> datetime:
    time = str(ds.get(f"{prefix}Time")).split(".")[0].ljust(6, "0")
    return datetime.strptime(str(ds.get(f"{prefix}Date")) + time, "%Y%m%d%H%M%S")


def test_same_patient_same_pseudonym_offset_and_study() -> None:
    first = _ct(
        ContentDate="20040119", ContentTime="072730", AcquisitionDate="20040119", AcquisitionTime="0700"
    )
    second = _ct(
        SOPInstanceUID=generate_uid(),
        SeriesInstanceUID=generate_uid(),
        ContentDate="20040122",
        ContentTime="072730",
        AcquisitionDate="20040119",
        AcquisitionTime="0700",
    )
    one, two = (deidentify(ds, key=KEY).dataset for ds in (first, second))
    assert one.PatientID == two.PatientID == one.PatientName == deidentify(first, key=KEY).report.pseudonym
    assert one.PatientID.startswith("ANON-") and one.PatientID != first.PatientID
    assert one.StudyInstanceUID == two.StudyInstanceUID != first.StudyInstanceUID
    assert one.SOPInstanceUID != two.SOPInstanceUID
    assert one.StudyDate == two.StudyDate != first.StudyDate
    # Intervals survive, across files and within one file (date + time move as one instant).
    assert _moment(two, "Content") - _moment(one, "Content") == _moment(second, "Content") - _moment(
        first, "Content"
    )
    assert _moment(one, "Content") - _moment(one, "Acquisition") == _moment(first, "Content") - _moment(
        first, "Acquisition"
    )
    assert _moment(one, "Study") - _moment(first, "Study") == _moment(two, "Content") - _moment(
        second, "Content"
    )
    assert one.LongitudinalTemporalInformationModified == "MODIFIED"
    assert [c.CodeValue for c in one.DeidentificationMethodCodeSequence] == ["113100", "113107"]


def test_references_inside_sequences_follow_the_remapped_instances() -> None:
    first = _ct()
    second = _ct(SOPInstanceUID=generate_uid())
    reference = Dataset()
    reference.ReferencedSOPClassUID = first.SOPClassUID
    reference.ReferencedSOPInstanceUID = first.SOPInstanceUID
    second.ReferencedImageSequence = Sequence([reference])
    second.SourceImageSequence = Sequence([copy.deepcopy(reference)])
    one, two = (deidentify(ds, key=KEY).dataset for ds in (first, second))
    for sequence in (two.ReferencedImageSequence, two.SourceImageSequence):
        assert sequence[0].ReferencedSOPInstanceUID == one.SOPInstanceUID
        assert sequence[0].ReferencedSOPClassUID == first.SOPClassUID  # class UIDs are kept
    assert one.file_meta.MediaStorageSOPInstanceUID == one.SOPInstanceUID
    assert one.SOPClassUID == first.SOPClassUID


def test_the_key_decides_everything_and_runs_are_repeatable() -> None:
    ds = _ct()
    again = [encode_dicom(deidentify(ds, key=KEY).dataset) for _ in range(2)]
    assert again[0] == again[1]
    mine, theirs = deidentify(ds, key=KEY).dataset, deidentify(ds, key=OTHER_KEY).dataset
    assert mine.PatientID != theirs.PatientID
    assert mine.StudyInstanceUID != theirs.StudyInstanceUID
    assert mine.StudyDate != theirs.StudyDate
    with pytest.raises(ValueError, match="at least 16 bytes"):
        deidentify(ds, key=b"short")


def test_remapped_uids_are_valid_version_8_uuids() -> None:
    uid = remap_uid(KEY, "1.2.3.4")
    assert re.fullmatch(r"2\.25\.[1-9]\d*", uid) and len(uid) <= 64
    assert (int(uid[5:]) >> 76) & 0xF == 8
    assert remap_uid(KEY, "1.2.3.4\x00") == uid != remap_uid(KEY, "1.2.3.5")


def test_issuer_is_part_of_the_patient() -> None:
    plain = deidentify(_ct(), key=KEY).report.pseudonym
    assert deidentify(_ct(IssuerOfPatientID="HOSP-A"), key=KEY).report.pseudonym != plain
    assert deidentify(_ct(PatientName="Someone^Else"), key=KEY).report.pseudonym == plain


@pytest.mark.parametrize(
    ("keyword", "value", "expected"),
    [
        ("StudyDate", "2001-13-45", DUMMY_DA),
        ("StudyDate", "garbage", DUMMY_DA),
        ("StudyDate", "20010230", DUMMY_DA),
        ("StudyTime", "25:00", DUMMY_TM),
        ("AcquisitionDateTime", "2001", DUMMY_DT),
        ("AcquisitionDateTime", "20010203xx", DUMMY_DT),
    ],
)
@pytest.mark.filterwarnings("ignore:Invalid value for VR")
def test_malformed_dates_become_dummies(keyword: str, value: str, expected: str) -> None:
    ds = _ct(**{keyword: value})
    assert str(getattr(deidentify(ds, key=KEY).dataset, keyword)) == expected


@pytest.mark.filterwarnings("ignore:Invalid value for VR")
def test_date_forms_keep_their_shape() -> None:
    ds = _ct(
        StudyDate="2001.02.03",  # ACR-NEMA form, rewritten as DA
        StudyTime="10",
        AcquisitionDateTime="20010203101112.123+0100",
        InstanceCreationDate=["20010203", "20010204"],
    )
    del ds.InstanceCreationTime
    out = deidentify(ds, key=KEY).dataset
    assert re.fullmatch(r"\d{8}", out.StudyDate) and re.fullmatch(r"\d{4}", out.StudyTime)
    assert re.fullmatch(r"\d{14}\.123\+0100", out.AcquisitionDateTime)
    first, second = (datetime.strptime(v, "%Y%m%d") for v in out.InstanceCreationDate)
    assert (second - first).days == 1


def test_modified_dates_option_off_gives_dummies_and_empties() -> None:
    out = deidentify(_ct(), key=KEY, options=DeidOptions(retain_modified_dates=False)).dataset
    assert out.StudyDate == out.AcquisitionDate == "" and out.ContentDate == DUMMY_DA  # Z, X/Z, Z/D
    assert out.LongitudinalTemporalInformationModified == "REMOVED"
    assert [c.CodeValue for c in out.DeidentificationMethodCodeSequence] == ["113100"]


def test_profile_actions_on_a_typical_header() -> None:
    ds = _ct(
        InstitutionName="General Hospital",
        InstitutionAddress="1 Main St",
        StationName="CT01",
        OperatorsName="Tech^Tom",
        StudyDescription="Head CT for J. Doe",
        AccessionNumber="A123",
        PatientBirthDate="19700101",
        PatientAge="054Y",
        OtherPatientIDs="MRN-42",
    )
    ds.add_new(0x00091001, "LO", "private")
    ds.add_new(0x60003000, "OW", bytes(8))
    ds.add_new(0x50000005, "US", 1)
    out = deidentify(ds, key=KEY).dataset
    assert out.InstitutionName == out.StationName == out.OperatorsName == DUMMY_TEXT  # X/Z/D -> D
    for gone in ("InstitutionAddress", "StudyDescription", "PatientAge", "OtherPatientIDs"):
        assert gone not in out
    assert out.AccessionNumber == "" and out.PatientBirthDate == ""
    assert not _foreign_tags(out)


def test_dummy_sequences_keep_structure_and_codes_but_lose_text() -> None:
    ds = _ct()
    concept = Dataset()
    concept.CodeValue, concept.CodingSchemeDesignator, concept.CodeMeaning = "121071", "DCM", "Finding"
    item = Dataset()
    item.RelationshipType, item.ValueType, item.TextValue = "CONTAINS", "TEXT", "John Doe, seen by Dr Who"
    item.ConceptNameCodeSequence = Sequence([concept])
    ds.ContentSequence = Sequence([item])
    person = Dataset()
    person.CodeValue, person.CodingSchemeDesignator, person.CodeMeaning = "12345", "L", "Dr Who"
    operator = Dataset()
    operator.PersonIdentificationCodeSequence = Sequence([person])
    operator.PersonAddress = "2 Side St"
    ds.OperatorIdentificationSequence = Sequence([operator])
    out = deidentify(ds, key=KEY).dataset
    content = out.ContentSequence[0]
    assert content.TextValue == DUMMY_TEXT and content.ValueType == "TEXT"
    assert content.ConceptNameCodeSequence[0].CodeMeaning == "Finding"
    coded = out.OperatorIdentificationSequence[0].PersonIdentificationCodeSequence[0]
    assert coded.CodeValue == coded.CodeMeaning == DUMMY_TEXT
    assert "PersonAddress" not in out.OperatorIdentificationSequence[0]


# ---------------------------------------------------------------------------------------------- burned-in


def _image(
    rows: int = 50, columns: int = 20, frames: int = 1, samples: int = 1, value: int = 200, **attrs: Any
) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID, ds.SOPInstanceUID = "1.2.840.10008.5.1.4.1.1.7", generate_uid()
    ds.PatientID, ds.PatientName, ds.Modality = "P1", "Doe^John", "OT"
    ds.Rows, ds.Columns, ds.SamplesPerPixel = rows, columns, samples
    ds.PhotometricInterpretation = "RGB" if samples == 3 else "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    if samples == 3:
        ds.PlanarConfiguration = 0
    if frames > 1:
        ds.NumberOfFrames = frames
    ds.PixelData = bytes([value]) * (rows * columns * frames * samples)
    for keyword, attr in attrs.items():
        setattr(ds, keyword, attr)
    return ds


def test_burned_in_text_is_refused_by_default() -> None:
    with pytest.raises(BurnedInAnnotationError, match="Burned In Annotation is YES"):
        deidentify(_image(BurnedInAnnotation="YES"), key=KEY)


def test_blanking_zeroes_the_bands_and_says_so() -> None:
    ds = _image(BurnedInAnnotation="YES")
    result = deidentify(ds, key=KEY, options=BLANK)
    pixels = result.dataset.pixel_array
    assert (pixels[:5] == 0).all() and (pixels[45:] == 0).all() and (pixels[5:45] == 200).all()
    assert result.report.burned_in == "blanked" and "YES" in result.report.burned_in_reason
    assert result.dataset.BurnedInAnnotation == "YES"  # the blanking is a heuristic, never a claim
    assert any("heuristic" in m for m in result.dataset.DeidentificationMethod)
    assert (ds.pixel_array == 200).all()  # the input is untouched


def test_blanking_custom_regions_on_colour_frames() -> None:
    ds = _image(frames=2, samples=3, BurnedInAnnotation="YES")
    options = DeidOptions(burned_in="blank", blank_regions=(BlankRegion(top=0, bottom=1, left=0, right=0.5),))
    pixels = pydicom.dcmread(
        io.BytesIO(encode_dicom(deidentify(ds, key=KEY, options=options).dataset))
    ).pixel_array
    assert pixels.shape == (2, 50, 20, 3)
    assert (pixels[:, :, :10] == 0).all() and (pixels[:, :, 10:] == 200).all()


def test_monochrome1_is_blanked_to_its_dark_end() -> None:
    ds = _image(BurnedInAnnotation="YES", PhotometricInterpretation="MONOCHROME1", value=10)
    pixels = deidentify(ds, key=KEY, options=BLANK).dataset.pixel_array
    assert (pixels[0] == 255).all()


@pytest.mark.parametrize(
    ("attrs", "suspected"),
    [
        ({"Modality": "US", "BurnedInAnnotation": "NO"}, True),  # the flag is not trusted for US
        ({"SOPClassUID": "1.2.840.10008.5.1.4.1.1.2", "Modality": "CT"}, False),
        (
            {
                "SOPClassUID": "1.2.840.10008.5.1.4.1.1.2",
                "Modality": "CT",
                "ImageType": ["DERIVED", "SCREEN SAVE"],
            },
            True,
        ),
        ({"SOPClassUID": "1.2.840.10008.5.1.4.1.1.7.2", "Modality": "CT"}, True),
    ],
)
def test_burned_in_heuristics(attrs: dict[str, Any], suspected: bool) -> None:
    ds = _image(**attrs)
    if suspected:
        with pytest.raises(BurnedInAnnotationError):
            deidentify(ds, key=KEY)
    else:
        assert deidentify(ds, key=KEY).report.burned_in == "not_suspected"


def test_dicomdir_is_refused() -> None:
    with pytest.raises(DeidRefused, match="DICOMDIR"):
        deidentify(pydicom.dcmread(get_testdata_file("DICOMDIR")), key=KEY)


# ---------------------------------------------------------------------------------------------- files, CLI


def test_key_file_is_created_private_and_reused(tmp_path: Path) -> None:
    path = tmp_path / "var" / "deid.key"
    key, created = load_or_create_key(path)
    assert created and len(key) >= 32 and stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_or_create_key(path) == (key, False)


def _corpus_tree(root: Path) -> None:
    for relative, name in (
        ("ct/CT_small.dcm", "CT_small.dcm"),
        ("mr/a/MR_small.dcm", "MR_small.dcm"),
        ("mr/a/b/rle", "MR_small_RLE.dcm"),
    ):
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(get_testdata_file(name), root / relative)


def test_tree_mirrors_paths_and_goes_past_bad_files(tmp_path: Path) -> None:
    source = tmp_path / "in"
    _corpus_tree(source)
    (source / "notes.txt").write_text("Patient: John Doe\n")
    shutil.copy(get_testdata_file("SC_rgb_small_odd.dcm"), source / "sc.dcm")  # a Secondary Capture: refused
    seen: list[tuple[int, int, str, str]] = []
    report = deidentify_tree(source, source / "out", key=KEY, progress=lambda *a: seen.append(a))
    assert sorted(report.done) == ["ct/CT_small.dcm", "mr/a/MR_small.dcm", "mr/a/b/rle"]
    assert [p.path for p in report.failed] == ["notes.txt"] and "not a DICOM" in report.failed[0].reason
    assert [p.path for p in report.refused] == ["sc.dcm"] and report.blanked == []
    assert [s[:2] for s in seen] == [(i, 5) for i in range(1, 6)]
    for relative in report.done:
        assert pydicom.dcmread(source / "out" / relative).PatientIdentityRemoved == "YES"
    # A second run must not pick up the first run's output inside the input folder.
    assert len(deidentify_tree(source, source / "out", key=KEY).done) == 3


def _cli() -> typer.Typer:
    # Mounted as in serving.cli, so "deid" stays a subcommand however many commands dicom_app has.
    app = typer.Typer()
    app.add_typer(dicom_app, name="dicom")
    return app


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    for name in ("HEALTHAGENT_DEID_KEY", "HEALTHAGENT_CONFIG"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HEALTHAGENT_DATA_DIR", str(tmp_path / "var"))
    return tmp_path


def test_cli_folder_with_generated_key(clean_env: Path) -> None:
    source, dest = clean_env / "in", clean_env / "out"
    _corpus_tree(source)
    result = CliRunner().invoke(_cli(), ["dicom", "deid", str(source), str(dest)])
    assert result.exit_code == 0, result.output
    assert "done: 3 file(s)" in result.output and str(clean_env / "var" / "deid.key") in result.output
    assert sorted(p.relative_to(dest).as_posix() for p in dest.rglob("*") if p.is_file()) == [
        "ct/CT_small.dcm",
        "mr/a/MR_small.dcm",
        "mr/a/b/rle",
    ]
    first = pydicom.dcmread(dest / "ct/CT_small.dcm").PatientID
    again = CliRunner().invoke(
        _cli(), ["dicom", "deid", str(source / "ct/CT_small.dcm"), str(dest / "again.dcm")]
    )
    assert again.exit_code == 0 and pydicom.dcmread(dest / "again.dcm").PatientID == first  # the key was kept


def test_cli_reports_refused_and_failed_files(clean_env: Path) -> None:
    source = clean_env / "in"
    _corpus_tree(source)
    (source / "notes.txt").write_text("not dicom")
    (clean_env / "key").write_bytes(KEY)
    shutil.copy(get_testdata_file("SC_rgb_small_odd.dcm"), source / "sc.dcm")
    args = ["dicom", "deid", str(source), str(clean_env / "out"), "--key-file", str(clean_env / "key")]
    result = CliRunner().invoke(_cli(), args)
    assert result.exit_code == 1, result.output
    assert "refused: 1" in result.output and "sc.dcm: burned-in text suspected" in result.output
    assert "failed: 1" in result.output and "notes.txt" in result.output
    blanked = CliRunner().invoke(_cli(), [*args, "--burned-in", "blank"])
    assert "refused:" not in blanked.output and (clean_env / "out" / "sc.dcm").is_file()
    assert "1 blanked heuristically" in blanked.output and "    sc.dcm" in blanked.output


def test_cli_usage_errors(clean_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    source = clean_env / "in"
    _corpus_tree(source)
    runner = CliRunner()
    assert runner.invoke(_cli(), ["dicom", "deid", str(source), str(source)]).exit_code == 2
    assert runner.invoke(_cli(), ["dicom", "deid", str(clean_env / "missing"), "x"]).exit_code == 2
    bad_choice = ["dicom", "deid", str(source), str(clean_env / "o"), "--burned-in", "maybe"]
    assert runner.invoke(_cli(), bad_choice).exit_code == 2
    (clean_env / "short").write_bytes(b"abc")
    short_key = ["dicom", "deid", str(source), str(clean_env / "o"), "--key-file", str(clean_env / "short")]
    assert runner.invoke(_cli(), short_key).exit_code == 2
    monkeypatch.setenv("HEALTHAGENT_DEID_KEY", "x" * 20)
    env_key = runner.invoke(_cli(), ["dicom", "deid", str(source), str(clean_env / "o")])
    assert env_key.exit_code == 0 and "key: $HEALTHAGENT_DEID_KEY" in env_key.output
