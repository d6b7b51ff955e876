"""Properties (hypothesis, derandomized, bounded) of the de-identifier and the DICOM reader.

De-identifier: no PHI value of the profile's tags survives at any depth, nor a private one; UIDs are
remapped one-to-one and the same way in every file; dates move by the patient's one offset, so intervals
survive. Reader: on damaged real files it gives pictures or a DicomError, never another exception; and
what it accepts, the de-identifier writes out."""

from __future__ import annotations

import io
from datetime import date, datetime, time, timedelta

import pydicom
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydicom.datadict import dictionary_VR, keyword_for_tag
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import UID, CTImageStorage, ExplicitVRLittleEndian

from bench.fuzz import DICOM_MUTATIONS, image_seeds
from tools.deid import DeidRefused, date_offset, deidentify, encode_dicom, patient_key, remap_uid
from tools.deid_profile import BASIC_PROFILE, MODIFIED_DATES_OPTION
from tools.dicom_io import REASONS, DicomError, read_dataset, render_dataset

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

KEY = b"property-deid-key-0123456789abcd"
# Derandomized: the same examples on every run (seeded by the test), no example database on disk.
BOUNDED = settings(
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def bounded(examples: int) -> settings:
    return settings(BOUNDED, max_examples=examples)


# The profile's free-text tags (removed, emptied or dummied), with their VR and the longest value it takes.
_TEXT_LIMITS = {"PN": 64, "LO": 64, "SH": 16, "AE": 16, "LT": 200, "ST": 200, "UT": 200, "UC": 200}


def _text_tags() -> list[tuple[int, str]]:
    tags = []
    for tag, code in sorted(BASIC_PROFILE.items()):
        if code.startswith("U") or tag >> 16 <= 0x0002:
            continue
        try:
            vr = dictionary_VR(tag)
        except KeyError:
            continue
        if vr in _TEXT_LIMITS and keyword_for_tag(tag):
            tags.append((tag, vr))
    return tags


PHI_TAGS = _text_tags()
# Sequences kept with their items cleaned (X/Z/U*), one the profile does not list, one it dummies.
NESTING = ["ReferencedImageSequence", "AnatomicRegionSequence", "ReferencedPatientPhotoSequence"]

marker = st.from_regex(r"Q[a-z]{6}[0-9]{3}", fullmatch=True)  # 10 characters nothing else contains


def _base(patient_id: str = "PID-PROPERTY") -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = "1.2.826.0.1.3680043.8.498.1"
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = "1.2.826.0.1.3680043.8.498.1"
    ds.Modality = "CT"
    ds.PatientID = patient_id
    return ds


def _value(vr: str, text: str) -> str:
    return f"{text}^{text[::-1]}" if vr == "PN" else text[: _TEXT_LIMITS[vr]]


def _encoded(ds: Dataset) -> bytes:
    return encode_dicom(deidentify(ds, key=KEY).dataset)


@bounded(200)
@given(
    placed=st.lists(
        st.tuples(st.sampled_from(PHI_TAGS), marker, st.integers(0, len(NESTING))), min_size=1, max_size=12
    ),
    private=marker,
)
def test_no_phi_value_survives_at_any_depth(placed: list, private: str) -> None:
    ds = _base(patient_id=private[::-1])
    items: dict[str, Dataset] = {}
    for (tag, vr), text, depth in placed:
        target = ds
        if depth:  # inside an item of a sequence, itself nested one level deeper for the last kind
            name = NESTING[depth - 1]
            if name not in items:
                items[name] = Dataset()
                setattr(ds, name, Sequence([items[name]]))
            target = items[name]
        target.add_new(tag, vr, _value(vr, text))
    block = ds.private_block(0x0009, "PROPERTY CORP", create=True)
    block.add_new(0x01, "LO", private)
    out = _encoded(ds)
    for (_tag, vr), text, _depth in placed:
        assert _value(vr, text).split("^")[0].encode() not in out, keyword_for_tag(_tag)
    assert private.encode() not in out and private[::-1].encode() not in out  # private tag and Patient ID


uid_root = "1.2.826.0.1.3680043.8.498."
uids = st.lists(st.integers(1, 10**12).map(lambda n: f"{uid_root}{n}"), min_size=6, max_size=6, unique=True)


def _uid_values(ds: Dataset) -> list[tuple[str, str]]:
    """(keyword, value) of every UI element at any depth."""
    found = []
    for elem in ds.iterall():
        if elem.VR == "UI" and elem.value:
            found.append((elem.keyword, str(elem.value)))
    return found


@bounded(120)
@given(ids=uids)
def test_uids_are_remapped_one_to_one_and_alike_in_every_file(ids: list[str]) -> None:
    study, series, first, second, frame, other = ids
    files = []
    for instance, referenced in ((first, second), (second, first)):
        ds = _base()
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = study, series, instance
        ds.FrameOfReferenceUID = frame if instance == first else other
        item = Dataset()
        item.ReferencedSOPClassUID, item.ReferencedSOPInstanceUID = CTImageStorage, referenced
        ds.ReferencedImageSequence = Sequence([item])
        files.append((ds, pydicom.dcmread(io.BytesIO(_encoded(ds)))))
    mapping: dict[str, set[str]] = {}
    for before, after in files:
        pairs_in, pairs_out = _uid_values(before), _uid_values(after)
        originals = dict(pairs_in)
        for keyword, value in pairs_out:
            if keyword in originals:
                mapping.setdefault(originals[keyword], set()).add(value)
        kept = dict(pairs_out)
        assert kept["SOPClassUID"] == CTImageStorage and kept["ReferencedSOPClassUID"] == CTImageStorage
        for keyword, value in pairs_out:
            assert (
                value.startswith("2.25.") or value == CTImageStorage or keyword.startswith("Implementation")
            )
            assert UID(value).is_valid
        encoded = encode_dicom(deidentify(before, key=KEY).dataset)
        assert not any(uid.encode() in encoded for uid in ids)
    remapped = {k: v for k, v in mapping.items() if k != CTImageStorage}
    assert all(len(v) == 1 for v in remapped.values()), remapped  # one output per input, in both files
    outputs = [next(iter(v)) for v in remapped.values()]
    assert len(set(outputs)) == len(outputs)  # distinct inputs stay distinct
    assert all(next(iter(v)) == remap_uid(KEY, k) for k, v in remapped.items())


LONE_DATES = sorted(
    tag
    for tag in MODIFIED_DATES_OPTION
    if dictionary_VR(tag) == "DA"
    and keyword_for_tag(tag).endswith("Date")
    and tag >> 16 == 0x0008
    and tag != 0x00080020  # Study Date: paired with Study Time below
)
days = st.dates(min_value=date(1950, 1, 1), max_value=date(2090, 12, 31))


@bounded(150)
@given(
    patient=st.from_regex(r"[A-Z0-9]{3,12}", fullmatch=True),
    first=st.lists(
        st.tuples(st.sampled_from(LONE_DATES), days), min_size=1, max_size=4, unique_by=lambda x: x[0]
    ),
    second=st.lists(
        st.tuples(st.sampled_from(LONE_DATES), days), min_size=1, max_size=4, unique_by=lambda x: x[0]
    ),
    study=st.datetimes(min_value=datetime(1950, 1, 1), max_value=datetime(2090, 12, 31)).map(
        lambda moment: moment.replace(microsecond=0)
    ),
)
def test_dates_move_by_one_offset_per_patient(
    patient: str, first: list, second: list, study: datetime
) -> None:
    shifts = set()
    offset = None
    for dates in (first, second):
        ds = _base(patient_id=patient)
        for tag, day in dates:
            ds.add_new(tag, "DA", day.strftime("%Y%m%d"))
        ds.StudyDate, ds.StudyTime = study.strftime("%Y%m%d"), study.strftime("%H%M%S")
        offset = date_offset(KEY, patient_key(ds))
        out = deidentify(ds, key=KEY).dataset
        for tag, day in dates:
            shifts.add(datetime.strptime(out[tag].value, "%Y%m%d").date() - day)
        moved = datetime.combine(
            datetime.strptime(out.StudyDate, "%Y%m%d").date(), time.fromisoformat(_colons(out.StudyTime))
        )
        assert moved - study == offset  # a date and its time move together, as one instant
    assert shifts == {timedelta(days=offset.days)}  # lone dates: the same whole days, in both files
    assert offset < timedelta(0)


def _colons(tm: str) -> str:
    return f"{tm[0:2]}:{tm[2:4]}:{tm[4:6]}"


# ----------------------------------------------------------------------------------------- reader


SEEDS = dict(image_seeds())
SEED_NAMES = sorted(SEEDS)


def _decodes_or_refuses(data: bytes) -> None:
    try:
        render_dataset(read_dataset(data), slices=2)
    except DicomError as exc:
        assert exc.reason in REASONS and str(exc)


@bounded(1500)
@given(
    name=st.sampled_from(SEED_NAMES),
    edits=st.lists(st.tuples(st.integers(0, 2**20), st.integers(0, 255)), max_size=12),
    cut=st.none() | st.integers(0, 2**20),
)
def test_reader_on_byte_edits_raises_only_its_own_error(name: str, edits: list, cut: int | None) -> None:
    data = bytearray(SEEDS[name])
    for position, value in edits:
        data[position % len(data)] = value
    if cut is not None:
        del data[cut % len(data) :]
    _decodes_or_refuses(bytes(data))


@bounded(1500)
@given(
    name=st.sampled_from(SEED_NAMES),
    mutations=st.lists(st.sampled_from(sorted(DICOM_MUTATIONS)), min_size=1, max_size=3),
    rng=st.randoms(use_true_random=False),
)
def test_reader_on_structured_damage_raises_only_its_own_error(name: str, mutations: list, rng) -> None:
    """The soak's mutators (wrong lengths, VRs, syntaxes, pixel data, private elements…), their choices
    drawn by hypothesis so that a failure shrinks to a small example."""
    data = SEEDS[name]
    for mutation in mutations:
        if data:
            data = DICOM_MUTATIONS[mutation](rng, data)
    _decodes_or_refuses(data)


@bounded(800)
@given(
    name=st.sampled_from(SEED_NAMES),
    mutation=st.sampled_from(sorted(DICOM_MUTATIONS)),
    rng=st.randoms(use_true_random=False),
)
def test_what_the_reader_accepts_is_written_out_without_the_patient(name: str, mutation: str, rng) -> None:
    """De-identification of any dataset the reader accepts succeeds (or refuses by policy), writes a file
    the reader accepts again, and no element of it still holds the Patient's Name or ID."""
    try:
        ds = read_dataset(DICOM_MUTATIONS[mutation](rng, SEEDS[name]))
    except DicomError:
        return
    identity = {str(ds.get(k, "")).strip() for k in ("PatientName", "PatientID")} - {""}
    identity = {value for value in identity if len(value) >= 4}
    try:
        result = deidentify(ds, key=KEY)
    except DeidRefused:
        return
    written = read_dataset(encode_dicom(result.dataset))
    for elem in written.iterall():
        if elem.VR in ("PN", "LO", "SH") and not isinstance(elem.value, bytes):
            assert str(elem.value).strip() not in identity, elem.keyword
