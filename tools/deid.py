"""De-identification of DICOM instances: PS3.15 Annex E Basic Profile on the header, burned-in text policy.

What is done to each instance (a copy; the input is never modified):

* Every Attribute of Table E.1-1 (``tools.deid_profile``) gets the basic profile's action, at any depth
  of Sequence nesting: ``X`` removed, ``Z`` emptied, ``D`` replaced by a dummy, ``U`` remapped.
* Compound codes leave the choice to the Attribute's Type in the IOD, which a generic tool does not know,
  so we take the option that keeps the instance valid in every IOD: ``X/Z`` -> ``Z``; ``X/D``, ``Z/D``
  and ``X/Z/D`` -> ``D``; ``X/Z/U*`` (Referenced / Source Image Sequence) -> kept, with the UIDs inside
  remapped, so that references between de-identified instances still resolve.
* ``D`` on a Sequence keeps its Items but fills them with dummies: table Attributes get their own action
  and every remaining free-text value (PN, LO, SH, LT, ST, UT, UC, AE, UR, UN) becomes a dummy. Coded
  entries (Code Value, Code Meaning, ...) are left readable, since the standard treats codes as safe,
  except inside the code sequences the table itself lists (Person Identification Code Sequence,
  Institution Code Sequence): those are dummied too. An SR Content Sequence thus keeps its tree, codes
  and numbers, but loses all text.
* Patient's Name and Patient ID become one pseudonym, an HMAC of the original Patient ID and Issuer of
  Patient ID under the caller's secret key: the same patient gets the same pseudonym in every file and
  every run with that key (Patient's Name and Birth Date stand in when there is no Patient ID).
* Retain Longitudinal Temporal Information with Modified Dates option (on by default): the dates and
  times that option lists, plus any other DA/DT/TM value, are shifted back by a per-patient offset of
  1..3650 days and 1..1439 minutes (an HMAC of the patient, like the pseudonym), so intervals survive.
  A date and its companion time (Study Date / Study Time, ...) move together as one instant; a lone date
  moves by the offset rounded down to whole days, so it may sit a day off a paired one. Values
  that cannot be parsed, and DT values coarser than a day, become dummies. Patient's Birth Date is not
  in the option and is emptied (Z), Patient's Age removed: Retain Patient Characteristics is off.
* UIDs: ``U`` Attributes, and any other UID that is not a registered DICOM UID or a class / transfer
  syntax UID, become ``2.25.<n>`` with ``n`` an HMAC of the original (as an RFC 9562 version-8 UUID),
  consistent across files and runs with the same key.
* Private Attributes, Curve Data (50xx) and whole Overlay groups (60xx: the table removes Overlay Data
  and Comments, and the rest of the module is useless without them) are removed; so are group lengths
  and Command / File Meta elements found in the body, values pydicom cannot parse or write back, and
  elements written with a VR that would change their action (a date stored as LO, a UID as DS).
* A DICOMDIR is refused: its records would need rebuilding from the de-identified files.
* Patient Identity Removed, De-identification Method (+ Code Sequence: 113100, and 113107 when dates
  are shifted) and Longitudinal Temporal Information Modified are set; the File Meta Information and
  preamble are rebuilt so that nothing leaks through them.

Burned-in text cannot be found in the header. An instance is *suspected* when Burned In Annotation is
YES, its modality routinely carries text (US, SC, XC, ES, OT by default, whatever the flag says: devices
set it wrongly), it is a Secondary Capture, or its Image Type marks a screen capture. Suspected
instances are refused, or with ``burned_in="blank"`` get configurable regions blacked out (default: the
top and bottom 10% of rows). Blanking is a heuristic: text elsewhere survives, so Burned In Annotation is
not set to NO and the result says ``burned_in="blanked"``; a caller must not treat that as clean.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import hmac
import io
import math
import os
import re
import secrets
import struct
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pydicom
from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydicom.datadict import dictionary_VR, keyword_for_tag, tag_for_keyword
from pydicom.dataelem import DataElement, empty_value_for_VR
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.errors import InvalidDicomError
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_data_element
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence
from pydicom.tag import BaseTag
from pydicom.uid import (
    UID,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    UID_dictionary,
)

from tools.deid_profile import BASIC_PROFILE, MODIFIED_DATES_OPTION

PROFILE_NAME = "DICOM PS3.15 E.1 Basic Application Confidentiality Profile"
# A fixed 2.25 UID of our own, so that de-identified files do not name the software that made the original.
IMPLEMENTATION_CLASS_UID = "2.25.241915302519433785806209396451826512853"
IMPLEMENTATION_VERSION = "HEALTHAGENT_DEID"
MIN_KEY_BYTES = 16
DICOMDIR_SOP_CLASS = "1.2.840.10008.1.3.10"
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"

DUMMY_TEXT = "ANONYMIZED"
DUMMY_DA = "19000101"
DUMMY_TM = "000000"
DUMMY_DT = "19000101000000"
_DUMMIES: dict[str, Any] = {
    "DA": DUMMY_DA,
    "TM": DUMMY_TM,
    "DT": DUMMY_DT,
    "AS": "000D",
    "DS": "0",
    "IS": "0",
}
_TEXT_VRS = frozenset({"AE", "LO", "LT", "PN", "SH", "ST", "UC", "UR", "UT", "UN"})
_NUMBER_VRS = frozenset({"AT", "FL", "FD", "SL", "SS", "SV", "UL", "US", "UV", "US or SS", "US or SS or OW"})
_DATE_VRS = frozenset({"DA", "DT", "TM"})
# Code Sequence Macro values: safe to keep (PS3.15 E.1 note 10) unless the sequence codes a person or site.
_CODE_MACRO = frozenset(
    tag_for_keyword(k)
    for k in (
        "CodeValue",
        "CodingSchemeDesignator",
        "CodingSchemeVersion",
        "CodeMeaning",
        "LongCodeValue",
        "URNCodeValue",
        "MappingResourceName",
    )
)
_PATIENT_NAME = 0x00100010
_PATIENT_ID = 0x00100020
_PIXEL_TAGS = (0x7FE00010, 0x7FE00008, 0x7FE00009)  # Pixel Data, Float / Double Float Pixel Data
# Compound codes resolved towards validity (module docstring); "K" = keep and clean inside.
_COMPOUND = {"X/Z": "Z", "X/D": "D", "Z/D": "D", "X/Z/D": "D", "X/Z/U*": "K"}
# pydicom raises all of these on values it cannot parse; such an element is dropped, never copied.
_PARSE_ERRORS = (ValueError, TypeError, LookupError, AttributeError, struct.error, NotImplementedError)


class DeidError(Exception):
    """A file could not be de-identified; the message says why."""


class DeidRefused(DeidError):
    """Deliberately not de-identified (policy, not a fault of the file)."""


class BurnedInAnnotationError(DeidRefused):
    """The pixels may carry burned-in text and the policy is to refuse (or blanking was impossible)."""


class UnsupportedObjectError(DeidRefused):
    """An object this tool does not de-identify (a DICOMDIR: rebuild it from de-identified files)."""


class NotDicomError(DeidError):
    """The file is not DICOM."""


class EncodeError(DeidError):
    """A dataset that cannot be written as a DICOM file (the message says why)."""


class BlankRegion(BaseModel):
    """A rectangle to black out, as fractions of the image height (top, bottom) and width (left, right)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    top: float = Field(ge=0, le=1)
    bottom: float = Field(ge=0, le=1)
    left: float = Field(default=0.0, ge=0, le=1)
    right: float = Field(default=1.0, ge=0, le=1)

    @model_validator(mode="after")
    def _ordered(self) -> BlankRegion:
        if self.top >= self.bottom or self.left >= self.right:
            raise ValueError("a region needs top < bottom and left < right")
        return self

    def bounds(self, rows: int, columns: int) -> tuple[int, int, int, int]:
        """Pixel bounds ``(row0, row1, col0, col1)``, half-open, rounded outwards so no edge row survives."""
        return (
            math.floor(self.top * rows),
            math.ceil(self.bottom * rows),
            math.floor(self.left * columns),
            math.ceil(self.right * columns),
        )


DEFAULT_BLANK_REGIONS = (BlankRegion(top=0.0, bottom=0.1), BlankRegion(top=0.9, bottom=1.0))


class DeidOptions(BaseModel):
    """How to de-identify; the defaults are the Basic Profile with shifted dates, refusing burned-in text."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    burned_in: Literal["refuse", "blank"] = Field(
        default="refuse", description="What to do with images suspected of burned-in text."
    )
    blank_regions: tuple[BlankRegion, ...] = Field(default=DEFAULT_BLANK_REGIONS, min_length=1)
    retain_modified_dates: bool = Field(
        default=True, description="Shift dates per patient (option 113107) instead of removing them."
    )
    burned_in_modalities: frozenset[str] = Field(
        default=frozenset({"US", "SC", "XC", "ES", "OT"}),
        description="Modalities treated as carrying burned-in text whatever Burned In Annotation says.",
    )


class DeidReport(BaseModel):
    """What was done to one instance (counts of elements, at every depth)."""

    removed: int = 0
    emptied: int = 0
    dummied: int = 0
    uids_remapped: int = 0
    dates_shifted: int = 0
    private_removed: int = 0
    pseudonym: str
    burned_in: Literal["not_suspected", "blanked"] = "not_suspected"
    burned_in_reason: str | None = None


@dataclass(frozen=True)
class DeidResult:
    dataset: Dataset
    report: DeidReport


class FileProblem(BaseModel):
    path: str
    reason: str


class TreeReport(BaseModel):
    """Outcome of :func:`deidentify_tree`; paths are relative to the input folder."""

    done: list[str] = Field(default_factory=list)
    blanked: list[str] = Field(default_factory=list, description="Done, with heuristic blanking only.")
    refused: list[FileProblem] = Field(default_factory=list)
    failed: list[FileProblem] = Field(default_factory=list)

    @property
    def all_done(self) -> bool:
        return not self.refused and not self.failed


# ---------------------------------------------------------------------------------------------- secrets


def _mac(key: bytes, purpose: str, value: str) -> bytes:
    # The purpose label keeps the derived values independent of each other.
    message = purpose.encode() + b"\x00" + value.encode("utf-8", "surrogateescape")
    return hmac.new(key, message, hashlib.sha256).digest()


def remap_uid(key: bytes, uid: str) -> str:
    """The de-identified UID for ``uid``: ``2.25.`` and a version-8 UUID derived from an HMAC."""
    raw = bytearray(_mac(key, "uid", uid.strip("\x00 "))[:16])
    raw[6] = (raw[6] & 0x0F) | 0x80  # version 8: custom (RFC 9562)
    raw[8] = (raw[8] & 0x3F) | 0x80  # RFC variant
    return f"2.25.{int.from_bytes(raw, 'big')}"


def patient_pseudonym(key: bytes, patient: str) -> str:
    """``ANON-`` and 16 base32 characters (80 bits) from an HMAC of the patient key."""
    code = base64.b32encode(_mac(key, "patient", patient)[:10]).decode()
    return f"ANON-{code}"


def date_offset(key: bytes, patient: str) -> timedelta:
    """The per-patient shift: minus 1..3650 days and 1..1439 minutes (never zero, so values change)."""
    digest = _mac(key, "date-offset", patient)
    days = 1 + int.from_bytes(digest[:4], "big") % 3650
    minutes = 1 + int.from_bytes(digest[4:8], "big") % 1439
    return -timedelta(days=days, minutes=minutes)


def _text(ds: Dataset, keyword: str) -> str:
    try:
        value = ds.get(keyword)
    except _PARSE_ERRORS:
        return ""
    return "" if value is None else str(value).strip()


def patient_key(ds: Dataset) -> str:
    """Who the instance is about, for pseudonyms and date offsets: Patient ID (+ issuer) when present."""
    patient_id = _text(ds, "PatientID")
    if patient_id:
        return f"id\x00{_text(ds, 'IssuerOfPatientID')}\x00{patient_id}"
    name = _text(ds, "PatientName")
    if name:
        return f"name\x00{name}\x00{_text(ds, 'PatientBirthDate')}"
    study = _text(ds, "StudyInstanceUID")
    return f"study\x00{study}" if study else "unknown"


def check_key(key: bytes) -> bytes:
    if len(key) < MIN_KEY_BYTES:
        raise ValueError(f"the de-identification key must be at least {MIN_KEY_BYTES} bytes")
    return key


def read_key_file(path: Path) -> bytes:
    """The key stored in ``path`` (its bytes, surrounding whitespace stripped)."""
    return check_key(path.read_bytes().strip())


def load_or_create_key(path: Path) -> tuple[bytes, bool]:
    """The key in ``path``, first creating it (random, mode 0600) if missing; the flag says it was created.

    Keeping the key is what keeps pseudonyms, UIDs and date offsets the same from one run to the next.
    """
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return read_key_file(path), False
    with os.fdopen(fd, "w") as handle:
        handle.write(secrets.token_hex(32) + "\n")
    return read_key_file(path), True


# ---------------------------------------------------------------------------------------------- dates


_DA = re.compile(r"(\d{4})(\d{2})(\d{2})")
_TM = re.compile(r"(\d{2})(?:(\d{2})(?:(\d{2})(\.\d{1,6})?)?)?")
_DT = re.compile(r"(\d{4})(\d{2})(\d{2})(?:(\d{2})(?:(\d{2})(?:(\d{2})(\.\d{1,6})?)?)?)?([+-]\d{4})?")


def _parse_da(value: str) -> datetime | None:
    text = value.strip()
    if len(text) == 10:
        text = text.replace(".", "")  # ACR-NEMA wrote YYYY.MM.DD
    match = _DA.fullmatch(text)
    if not match:
        return None
    try:
        return datetime(int(match[1]), int(match[2]), int(match[3]))
    except ValueError:
        return None


def _parse_tm(value: str) -> tuple[int, int, int, str, int] | None:
    """``(hour, minute, second, fraction, precision)`` with precision 1..3 (hour, minute, second)."""
    match = _TM.fullmatch(value.strip().replace(":", ""))
    if not match:
        return None
    hour, minute, second = int(match[1]), int(match[2] or 0), int(match[3] or 0)
    if hour > 23 or minute > 59 or second > 59:
        return None
    precision = 3 if match[3] else 2 if match[2] else 1
    return hour, minute, second, match[4] or "", precision


def _format_tm(moment: datetime, precision: int, fraction: str) -> str:
    # The shift is in whole minutes: an hour-only value gains its minutes, seconds are untouched.
    text = moment.strftime("%H%M")
    if precision >= 3:
        text += moment.strftime("%S") + fraction
    return text


def _shift_da(value: str, days: int) -> str:
    moment = _parse_da(value)
    if moment is None:
        return DUMMY_DA
    try:
        return (moment + timedelta(days=days)).strftime("%Y%m%d")
    except OverflowError:
        return DUMMY_DA


def _shift_tm(value: str, offset: timedelta) -> str:
    parsed = _parse_tm(value)
    if parsed is None:
        return DUMMY_TM
    hour, minute, second, fraction, precision = parsed
    moment = datetime(2000, 1, 1, hour, minute, second) + timedelta(seconds=offset.seconds)
    return _format_tm(moment, precision, fraction)


def _shift_dt(value: str, offset: timedelta) -> str:
    match = _DT.fullmatch(value.strip())
    if not match:
        return DUMMY_DT  # also DT values coarser than a day: shifting them would keep or fake precision
    try:
        start = datetime(
            int(match[1]),
            int(match[2]),
            int(match[3]),
            int(match[4] or 0),
            int(match[5] or 0),
            int(match[6] or 0),
        )
        if match[4] is None:
            return (start + timedelta(days=offset.days)).strftime("%Y%m%d") + (match[8] or "")
        moment = start + offset
    except (ValueError, OverflowError):
        return DUMMY_DT
    precision = 3 if match[6] else 2
    return moment.strftime("%Y%m%d") + _format_tm(moment, precision, match[7] or "") + (match[8] or "")


def _shift_pair(date_value: str, time_value: str, offset: timedelta) -> tuple[str, str] | None:
    day, parsed = _parse_da(date_value), _parse_tm(time_value)
    if day is None or parsed is None:
        return None
    hour, minute, second, fraction, precision = parsed
    try:
        moment = day.replace(hour=hour, minute=minute, second=second) + offset
    except OverflowError:
        return None
    return moment.strftime("%Y%m%d"), _format_tm(moment, precision, fraction)


# ---------------------------------------------------------------------------------------------- header


@dataclass
class _Context:
    key: bytes
    options: DeidOptions
    offset: timedelta
    counts: Counter[str]
    encoding: tuple[bool, bool] = (False, True)  # (implicit VR, little endian) of the output


_CODING_UIDS = frozenset({"CodingSchemeUID", "ContextUID", "MappingResourceUID"})


def _is_kept_uid(tag: int, value: str) -> bool:
    """Class, transfer syntax, coding scheme and other registered UIDs name no one: keep them."""
    keyword = keyword_for_tag(tag)
    if keyword.endswith("ClassUID") or "TransferSyntax" in keyword or keyword in _CODING_UIDS:
        return True
    return value in UID_dictionary


def _dummy(vr: str) -> Any:
    if vr in _DUMMIES:
        return _DUMMIES[vr]
    if vr in _NUMBER_VRS:
        return 0
    if vr.startswith("O") or vr == "UN":
        return bytes(8)  # a multiple of every OB/OW/OF/OL/OD/OV word size
    return DUMMY_TEXT


def _check_writable(ds: Dataset, elem: DataElement, encoding: tuple[bool, bool]) -> None:
    """Raise if ``elem`` cannot be written: pydicom reads leniently (a number string holding a non-Latin
    character, an ambiguous VR it cannot settle) but writes strictly, and one such element would make
    the whole file unwritable. Pixel data is checked when the file is read, Sequences item by item."""
    buffer = DicomBytesIO()
    buffer.is_implicit_VR, buffer.is_little_endian = encoding
    write_data_element(buffer, elem, ds.get("SpecificCharacterSet") or getattr(ds, "_character_set", None))


# VRs that decide an action (dates shift, UIDs remap, names become pseudonyms, items get cleaned).
_DECISIVE_VRS = frozenset({"DA", "DT", "TM", "UI", "PN", "SQ"})


def _vr_fits(tag: int, vr: str) -> bool:
    """Whether an element written with ``vr`` gets the action its tag needs: its VR is one the data
    dictionary gives the tag, or neither is a VR that decides an action (a vendor's SH for an LO is
    harmless; a date stored as LO would escape the shift, a UID as DS the remapping)."""
    try:
        allowed = set(dictionary_VR(tag).split(" or "))
    except KeyError:
        return True  # a tag the dictionary does not know: nothing to compare with
    return vr in allowed or not ((allowed | {vr}) & _DECISIVE_VRS)


def _values(elem: DataElement) -> list[str]:
    value = elem.value
    items = value if isinstance(value, MultiValue | list | tuple) else [value]
    return [str(v) for v in items]


def _set_values(elem: DataElement, values: list[str]) -> None:
    elem.value = values[0] if len(values) == 1 else values


def _action(tag: int, vr: str, ctx: _Context, fill: bool, codes: bool) -> str:
    """What to do with one element: X Z D U (table), S shift, P pseudonym, K keep (and clean inside)."""
    if tag in (_PATIENT_NAME, _PATIENT_ID) and vr in ("PN", "LO"):
        return "P"
    if vr in _DATE_VRS and ctx.options.retain_modified_dates and (tag in MODIFIED_DATES_OPTION):
        return "S"
    code = BASIC_PROFILE.get(tag)
    if code is not None:
        action = _COMPOUND.get(code, code)
        if action == "K" and vr != "SQ":
            action = "U"
        return "U" if action == "D" and vr == "UI" else action
    if vr == "UI":
        return "U?"  # remapped unless a class / registered UID, decided per value
    if vr in _DATE_VRS:
        return "S" if ctx.options.retain_modified_dates else "K"
    if fill and vr in _TEXT_VRS and (codes or tag not in _CODE_MACRO):
        return "D"
    return "K"


def _paired_shifts(ds: Dataset, ctx: _Context, fill: bool, codes: bool) -> dict[int, str]:
    """New values for date/time companions (Study Date + Study Time, ...) that move as one instant."""
    pairs: dict[int, str] = {}
    for date_tag in list(ds.keys()):
        try:
            date_elem = ds[date_tag]
        except _PARSE_ERRORS:
            continue
        keyword = date_elem.keyword
        if date_elem.VR != "DA" or "Date" not in keyword or date_elem.VM != 1:
            continue
        time_tag = tag_for_keyword(keyword.replace("Date", "Time"))
        if time_tag is None or time_tag not in ds:
            continue
        try:
            time_elem = ds[time_tag]
        except _PARSE_ERRORS:
            continue
        if time_elem.VR != "TM" or time_elem.VM != 1:
            continue
        if (
            _action(date_tag, "DA", ctx, fill, codes) != "S"
            or _action(time_tag, "TM", ctx, fill, codes) != "S"
        ):
            continue
        shifted = _shift_pair(str(date_elem.value), str(time_elem.value), ctx.offset)
        if shifted is not None:
            pairs[int(date_tag)], pairs[int(time_tag)] = shifted
    return pairs


def _shift(elem: DataElement, ctx: _Context) -> list[str]:
    if elem.VR == "DA":
        return [_shift_da(v, ctx.offset.days) for v in _values(elem)]
    if elem.VR == "TM":
        return [_shift_tm(v, ctx.offset) for v in _values(elem)]
    return [_shift_dt(v, ctx.offset) for v in _values(elem)]


def _clean(ds: Dataset, ctx: _Context, pseudonym: str, *, fill: bool = False, codes: bool = False) -> None:
    """Apply the profile to one Dataset level, in place, and recurse into its Sequences."""
    if _text(ds, "PatientID"):
        # An Item about another patient (a record, a referenced patient) gets that patient's pseudonym.
        pseudonym = patient_pseudonym(ctx.key, patient_key(ds))
    pairs = _paired_shifts(ds, ctx, fill, codes)
    for tag in list(ds.keys()):
        tag = BaseTag(tag)
        if tag.is_private:
            del ds[tag]
            ctx.counts["private_removed"] += 1
            continue
        group = tag.group
        if 0x5000 <= group <= 0x50FF or 0x6000 <= group <= 0x60FF or tag.element == 0 or group <= 0x0002:
            # Curves, overlays, stale group lengths, and Command or File Meta elements strayed into the body.
            del ds[tag]
            ctx.counts["removed"] += 1
            continue
        try:
            elem = ds[tag]
            if not _vr_fits(int(tag), elem.VR):
                # Written with a VR its tag never has: the value cannot be trusted to be what the tag
                # says, and the actions go by VR (a date stored as LO would escape the shift).
                raise ValueError(f"VR {elem.VR} for {tag}")
            _apply(ds, elem, ctx, pseudonym, pairs, fill=fill, codes=codes)
            if tag in ds and elem.VR != "SQ" and int(tag) not in _PIXEL_TAGS:
                _check_writable(ds, elem, ctx.encoding)
        except Exception:  # noqa: BLE001 - a value that cannot be read or rewritten is removed, never kept
            if tag in ds:
                del ds[tag]
            ctx.counts["removed"] += 1


def _apply(
    ds: Dataset,
    elem: DataElement,
    ctx: _Context,
    pseudonym: str,
    pairs: dict[int, str],
    *,
    fill: bool,
    codes: bool,
) -> None:
    tag, vr = int(elem.tag), elem.VR
    action = _action(tag, vr, ctx, fill, codes)
    if action == "X":
        del ds[tag]
        ctx.counts["removed"] += 1
    elif action == "Z":
        if not elem.is_empty:
            elem.value = Sequence() if vr == "SQ" else empty_value_for_VR(vr)
            ctx.counts["emptied"] += 1
    elif action == "P":
        elem.value = pseudonym
        ctx.counts["dummied"] += 1
    elif vr == "SQ":
        # D on a Sequence: keep the Items, dummy their free text (and their codes, for coded people/sites).
        dummy = fill or action == "D"
        coded = codes or (action == "D" and elem.keyword.endswith("CodeSequence"))
        for item in elem.value:
            _clean(item, ctx, pseudonym, fill=dummy, codes=coded)
    elif elem.is_empty or action == "K":
        return
    elif action == "D":
        elem.value = _dummy(vr)
        ctx.counts["dummied"] += 1
    elif action == "S":
        _set_values(elem, [pairs[tag]] if tag in pairs else _shift(elem, ctx))
        ctx.counts["dates_shifted"] += 1
    elif action in ("U", "U?"):
        values = _values(elem)
        new = [
            v if not v or (action == "U?" and _is_kept_uid(tag, v)) else remap_uid(ctx.key, v) for v in values
        ]
        if new != values:
            _set_values(elem, new)
            ctx.counts["uids_remapped"] += 1


# ---------------------------------------------------------------------------------------------- pixels


def burned_in_suspicion(ds: Dataset, options: DeidOptions | None = None) -> str | None:
    """Why the pixels may carry burned-in text, or None. Heuristic by nature (see the module docstring)."""
    options = options or DeidOptions()
    if not any(tag in ds for tag in _PIXEL_TAGS):
        return None
    if _text(ds, "BurnedInAnnotation").upper() == "YES":
        return "Burned In Annotation is YES"
    modality = _text(ds, "Modality").upper()
    if modality in options.burned_in_modalities:
        return f"modality {modality} routinely carries burned-in text"
    sop_class = _text(ds, "SOPClassUID")
    if sop_class == SECONDARY_CAPTURE or sop_class.startswith(SECONDARY_CAPTURE + "."):
        return "Secondary Capture images are often screenshots with text"
    try:
        image_type = _values(ds["ImageType"]) if "ImageType" in ds else []
    except _PARSE_ERRORS:
        image_type = []
    if "SCREEN SAVE" in (v.strip().upper() for v in image_type):
        return "Image Type marks a screen capture"
    return None


def _fill_value(ds: Dataset) -> int:
    """The darkest stored value: 0, except for MONOCHROME1 (inverted) and signed MONOCHROME2 data."""
    bits = int(ds.get("BitsStored") or ds.get("BitsAllocated") or 8)
    signed = int(ds.get("PixelRepresentation") or 0) == 1
    if _text(ds, "PhotometricInterpretation") == "MONOCHROME1":
        return (1 << (bits - 1)) - 1 if signed else (1 << bits) - 1
    if _text(ds, "PhotometricInterpretation") == "MONOCHROME2" and signed:
        return -(1 << (bits - 1))
    return 0


def blank_regions(ds: Dataset, regions: tuple[BlankRegion, ...]) -> None:
    """Black out ``regions`` of every frame, in place; the pixels are stored uncompressed afterwards."""
    if "PixelData" not in ds:
        raise BurnedInAnnotationError("cannot blank: only integer Pixel Data can be blanked")
    try:
        if ds.file_meta.TransferSyntaxUID.is_compressed:
            ds.decompress(generate_instance_uid=False)  # decoded to RGB where it was YBR
        pixels = np.array(ds.pixel_array, copy=True)
        _store_native(ds, _blanked(ds, pixels, regions))
    except Exception as exc:  # damaged pixel data fails inside the codecs in many ways
        raise BurnedInAnnotationError(
            f"burned-in text suspected and the pixels cannot be blanked: {_first_line(exc)}"
        ) from exc
    except BaseException as exc:
        if type(exc).__name__ != "PanicException":  # a Rust codec's panic (pyo3): a damaged stream
            raise
        raise BurnedInAnnotationError(
            f"burned-in text suspected and the pixels cannot be blanked: {_first_line(exc)}"
        ) from exc


def _first_line(exc: BaseException, limit: int = 200) -> str:
    """An exception's message fit for a user: one line, bounded."""
    text = " ".join(str(exc).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _blanked(ds: Dataset, pixels: np.ndarray, regions: tuple[BlankRegion, ...]) -> np.ndarray:
    rows, columns, fill = int(ds.Rows), int(ds.Columns), _fill_value(ds)
    for region in regions:
        r0, r1, c0, c1 = region.bounds(rows, columns)
        if int(ds.get("SamplesPerPixel") or 1) > 1:
            pixels[..., r0:r1, c0:c1, :] = fill
        else:
            pixels[..., r0:r1, c0:c1] = fill
    return pixels


def _store_native(ds: Dataset, pixels: np.ndarray) -> None:
    """Write decoded ``pixels`` back as native Pixel Data in the dataset's (uncompressed) transfer syntax.

    Our own encoder rather than ``Dataset.set_pixel_data``, which refuses 32-bit and big-endian data.
    """
    if int(ds.BitsAllocated) not in (8, 16, 32, 64):
        raise NotImplementedError(f"Bits Allocated {ds.BitsAllocated} cannot be re-encoded")
    if _text(ds, "PhotometricInterpretation").startswith("YBR_FULL"):
        ds.PhotometricInterpretation = "RGB"  # pydicom hands back YBR_FULL(_422) converted to RGB
    if int(ds.get("SamplesPerPixel") or 1) > 1 and int(ds.get("PlanarConfiguration") or 0) == 1:
        pixels = np.moveaxis(pixels, -1, -3)  # colour-by-plane: all reds, then greens, then blues
    order = "<" if ds.file_meta.TransferSyntaxUID.is_little_endian else ">"
    data = np.ascontiguousarray(pixels, dtype=pixels.dtype.newbyteorder(order)).tobytes()
    ds.PixelData = data + b"\x00" * (len(data) % 2)
    # Bytes as OB: big-endian OW would swap each pair of 8-bit samples on the way out.
    ds["PixelData"].VR = "OB" if int(ds.BitsAllocated) == 8 else "OW"


# ---------------------------------------------------------------------------------------------- instances


def _transfer_syntax(ds: Dataset) -> UID:
    """The declared Transfer Syntax when it is a known one, else the encoding the dataset was read in."""
    declared = UID(_text(getattr(ds, "file_meta", None) or FileMetaDataset(), "TransferSyntaxUID"))
    if declared.is_transfer_syntax:
        return declared
    implicit, little = getattr(ds, "original_encoding", (None, None))
    if implicit:
        return ImplicitVRLittleEndian
    return ExplicitVRLittleEndian if little is not False else ExplicitVRBigEndian


def _new_file_meta(out: Dataset, old: FileMetaDataset, key: bytes) -> FileMetaDataset:
    """Fresh File Meta Information: nothing copied but the classes and (remapped) instance."""
    meta = FileMetaDataset()
    meta.FileMetaInformationVersion = b"\x00\x01"
    sop_class = _text(out, "SOPClassUID") or _text(old, "MediaStorageSOPClassUID")
    if sop_class and UID(sop_class).is_valid:  # a damaged one would make the file unwritable
        meta.MediaStorageSOPClassUID = sop_class
    sop_instance = _text(out, "SOPInstanceUID")
    if not sop_instance and _text(old, "MediaStorageSOPInstanceUID"):
        sop_instance = remap_uid(key, _text(old, "MediaStorageSOPInstanceUID"))
    if sop_instance:
        meta.MediaStorageSOPInstanceUID = sop_instance
    meta.TransferSyntaxUID = _transfer_syntax(out)
    meta.ImplementationClassUID = IMPLEMENTATION_CLASS_UID
    meta.ImplementationVersionName = IMPLEMENTATION_VERSION
    return meta


_STAMPED = (
    "PatientIdentityRemoved",
    "DeidentificationMethod",
    "DeidentificationMethodCodeSequence",
    "LongitudinalTemporalInformationModified",
)


def _stamp(out: Dataset, options: DeidOptions, blanked: bool) -> None:
    methods = [PROFILE_NAME, "HMAC-SHA256 pseudonyms and 2.25 UIDs (HealthAgent)"]
    codes = [("113100", "Basic Application Confidentiality Profile")]
    if options.retain_modified_dates:
        methods.append("Retain Longitudinal Temporal Info Modified Dates")
        codes.append(("113107", "Retain Longitudinal Temporal Information Modified Dates Option"))
    if blanked:
        methods.append("Burned-in text: heuristic region blanking only")
    for keyword in _STAMPED:
        # Set anew, not over the source's: one written with an odd VR would not take these values.
        if keyword in out:
            del out[keyword]
    out.PatientIdentityRemoved = "YES"
    out.DeidentificationMethod = methods
    items = []
    for value, meaning in codes:
        item = Dataset()
        item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, "DCM", meaning
        items.append(item)
    out.DeidentificationMethodCodeSequence = Sequence(items)
    out.LongitudinalTemporalInformationModified = "MODIFIED" if options.retain_modified_dates else "REMOVED"


def is_dicomdir(ds: Dataset) -> bool:
    meta = getattr(ds, "file_meta", None) or FileMetaDataset()
    classes = {_text(ds, "SOPClassUID"), _text(meta, "MediaStorageSOPClassUID")}
    return DICOMDIR_SOP_CLASS in classes or "DirectoryRecordSequence" in ds


def deidentify(ds: Dataset, *, key: bytes, options: DeidOptions | None = None) -> DeidResult:
    """A de-identified copy of ``ds`` and a report of what changed; ``ds`` itself is left untouched.

    Raises :class:`BurnedInAnnotationError` when burned-in text is suspected and the policy refuses it
    (or blanking is impossible), :class:`UnsupportedObjectError` for a DICOMDIR.
    """
    options = options or DeidOptions()
    check_key(key)
    # Every read goes to the copy: pydicom converts raw values lazily, in place, even on a read.
    out = copy.deepcopy(ds)
    if is_dicomdir(out):
        raise UnsupportedObjectError(
            "DICOMDIR: its records name patients; rebuild it from de-identified files"
        )
    suspicion = burned_in_suspicion(out, options)
    if suspicion and options.burned_in == "refuse":
        raise BurnedInAnnotationError(f"burned-in text suspected ({suspicion}); refused by policy")

    subject = patient_key(out)
    pseudonym = patient_pseudonym(key, subject)
    syntax = _transfer_syntax(out)
    ctx = _Context(
        key=key,
        options=options,
        offset=date_offset(key, subject),
        counts=Counter(),
        encoding=(syntax.is_implicit_VR, syntax.is_little_endian),
    )
    old_meta = getattr(out, "file_meta", None) or FileMetaDataset()
    if hasattr(out, "filename"):
        out.filename = None  # the source path may itself name the patient
    _clean(out, ctx, pseudonym)
    _stamp(out, options, blanked=suspicion is not None)
    out.file_meta = _new_file_meta(out, old_meta, key)
    out.preamble = bytes(128)
    if suspicion:
        blank_regions(out, options.blank_regions)  # updates the Transfer Syntax in the new meta
    report = DeidReport(
        pseudonym=pseudonym,
        burned_in="blanked" if suspicion else "not_suspected",
        burned_in_reason=suspicion,
        **{name: ctx.counts[name] for name in DeidReport.model_fields if name in ctx.counts},
    )
    return DeidResult(dataset=out, report=report)


def read_dicom(path: Path) -> Dataset:
    """Read a DICOM file, also one without the Part 10 preamble (old ACR-NEMA style exports)."""
    try:
        return pydicom.dcmread(path)
    except InvalidDicomError:
        pass
    try:
        ds = pydicom.dcmread(path, force=True)
        # A forced read "succeeds" on anything; demand standard elements that every instance has.
        if not any(0x00080000 <= int(tag) < 0x00210000 for tag in ds.keys()):
            raise NotDicomError(f"{path.name}: not a DICOM file")
    except Exception as exc:  # a forced read of arbitrary bytes fails in any way
        raise NotDicomError(f"{path.name}: not a DICOM file") from exc
    return ds


def encode_dicom(ds: Dataset) -> bytes:
    """``ds`` as a DICOM file: a strict Part 10 file whenever the dataset names its SOP class and instance."""
    meta = ds.file_meta
    complete = all(k in meta for k in ("MediaStorageSOPClassUID", "MediaStorageSOPInstanceUID"))
    buffer = io.BytesIO()
    try:
        ds.save_as(buffer, enforce_file_format=complete)
    except Exception as exc:  # pydicom's writer fails with many types; callers get one
        raise EncodeError(f"the dataset cannot be written as DICOM: {_first_line(exc)}") from exc
    return buffer.getvalue()


def save_dicom(ds: Dataset, path: Path) -> None:
    """Write ``ds`` to ``path`` via a temporary name, so a failure never leaves half a file."""
    data = encode_dicom(ds)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".part")
    try:
        partial.write_bytes(data)
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)


def deidentify_file(
    source: Path, dest: Path, *, key: bytes, options: DeidOptions | None = None
) -> DeidResult:
    """De-identify the file ``source`` into ``dest`` (never onto itself)."""
    source, dest = Path(source), Path(dest)
    if dest.exists() and dest.resolve() == source.resolve():
        raise ValueError("the output would overwrite the original")
    result = deidentify(read_dicom(source), key=key, options=options)
    save_dicom(result.dataset, dest)
    return result


ProgressCallback = Callable[[int, int, str, str], None]
"""Called after each file with (index from 1, total, relative path, outcome: done / refused / failed)."""


def deidentify_tree(
    source: Path,
    dest: Path,
    *,
    key: bytes,
    options: DeidOptions | None = None,
    progress: ProgressCallback | None = None,
) -> TreeReport:
    """De-identify every file under ``source`` into ``dest`` at the same relative path.

    A file that fails or is refused is reported and the walk goes on. An output folder inside the input
    is left out of the walk.
    """
    source, dest = Path(source).resolve(), Path(dest).resolve()
    if source == dest:
        raise ValueError("the output folder must differ from the input folder")
    check_key(key)
    files = sorted(p for p in source.rglob("*") if p.is_file() and not p.resolve().is_relative_to(dest))
    report = TreeReport()
    for index, path in enumerate(files, start=1):
        relative = path.relative_to(source).as_posix()
        outcome = _run_one(path, dest / relative, relative, report, key=key, options=options)
        if progress is not None:
            progress(index, len(files), relative, outcome)
    return report


def deidentify_path(
    source: Path,
    dest: Path,
    *,
    key: bytes,
    options: DeidOptions | None = None,
    progress: ProgressCallback | None = None,
) -> TreeReport:
    """A folder as :func:`deidentify_tree`; a file into ``dest``, or ``dest/<name>`` if that is a folder."""
    source, dest = Path(source), Path(dest)
    if source.is_dir():
        return deidentify_tree(source, dest, key=key, options=options, progress=progress)
    check_key(key)
    report = TreeReport()
    target = dest / source.name if dest.is_dir() else dest
    outcome = _run_one(source, target, source.name, report, key=key, options=options)
    if progress is not None:
        progress(1, 1, source.name, outcome)
    return report


def _run_one(
    path: Path, target: Path, relative: str, report: TreeReport, *, key: bytes, options: DeidOptions | None
) -> str:
    """De-identify one file of a batch, recording the outcome instead of raising."""
    try:
        result = deidentify_file(path, target, key=key, options=options)
    except DeidRefused as exc:
        report.refused.append(FileProblem(path=relative, reason=str(exc)))
        return "refused"
    except Exception as exc:  # noqa: BLE001 - malformed files raise anything; one must not stop the rest
        report.failed.append(FileProblem(path=relative, reason=f"{type(exc).__name__}: {exc}"))
        return "failed"
    report.done.append(relative)
    if result.report.burned_in == "blanked":
        report.blanked.append(relative)
        return "done (burned-in text blanked heuristically)"
    return "done"
