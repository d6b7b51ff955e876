"""A PACS over DICOMweb: find studies (QIDO-RS), fetch them for a second read (WADO-RS), and store the
read back (STOW-RS) as a Basic Text SR and generated images as Secondary Capture, in the source study.

Every failure of the PACS surfaces as one of our exceptions, never as a ``requests`` one:
:class:`PacsUnavailable` (unreachable, 5xx, wrong URL), :class:`PacsTimeout` (a kind of unavailable),
:class:`StudyNotFound`, :class:`PacsRejected` (the PACS refused the request or some instances).
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any

import numpy as np
import requests
from dicomweb_client.api import DICOMwebClient
from PIL import Image
from pydantic import AnyHttpUrl, BaseModel, ConfigDict, Field, SecretStr, model_validator
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    ExplicitVRLittleEndian,
    generate_uid,
)
from pydicom.valuerep import PersonName

from tools.fhir import ReadProvenance, ReadReport

BASIC_TEXT_SR = "1.2.840.10008.5.1.4.1.1.88.11"
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
MANUFACTURER = "Health Agent"
# Local coding scheme for our user ids in the verifying observer code (DICOM: local schemes start "99").
LOCAL_SCHEME = "99HEALTHAGENT"
PREAMBLE = b"\0" * 128
_UID = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))+$")


def is_dicom_uid(text: str) -> bool:
    return len(text) <= 64 and _UID.match(text) is not None


def _checked_uid(text: str) -> str:
    # UIDs go into URL paths: anything else could address another resource of the PACS.
    if not is_dicom_uid(text):
        raise ValueError(f"not a DICOM UID: {text!r}")
    return text


class PacsError(Exception):
    """Base of every PACS failure; the message is fit for a log line or a CLI user."""


class PacsUnavailable(PacsError):
    """The PACS cannot be reached, answers 5xx, or has no DICOMweb service at the configured URL."""


class PacsTimeout(PacsUnavailable):
    """The PACS did not answer within ``PacsConfig.timeout_s``."""


class StudyNotFound(PacsError):
    """The PACS has no study with this Study Instance UID."""


class PacsRejected(PacsError):
    """The PACS refused the request (4xx) or some of the instances sent to it."""


class PacsConfig(BaseModel):
    """Where the PACS is: ``url`` is the DICOMweb root (Orthanc: ``http://host:8042/dicom-web``)."""

    model_config = ConfigDict(extra="forbid")

    url: AnyHttpUrl
    # requests applies it to the connect and to each wait for data, not to a whole transfer.
    timeout_s: float = Field(default=30.0, gt=0, le=600)
    username: str | None = None
    password: SecretStr | None = None
    # Extra attempts (0.5 s, 1 s, … apart) after a connection error, a timeout or a 408/429/503/504 answer;
    # a dead PACS costs (retries + 1) × timeout_s plus the back-off before PacsTimeout.
    retries: int = Field(default=1, ge=0, le=5)

    @model_validator(mode="after")
    def _credentials_in_pairs(self) -> PacsConfig:
        if (self.username is None) != (self.password is None):
            raise ValueError("set both username and password, or neither")
        return self

    @property
    def root(self) -> str:
        return str(self.url).rstrip("/")


class StudyQuery(BaseModel):
    """QIDO-RS study filters; all optional, combined with AND. Dates are inclusive."""

    model_config = ConfigDict(extra="forbid")

    patient_id: str | None = None
    date_from: date | None = None
    date_to: date | None = None
    modality: str | None = Field(default=None, pattern=r"^[A-Z0-9_]{1,16}$")
    accession_number: str | None = None
    limit: int = Field(default=100, ge=1, le=10_000)

    def filters(self) -> dict[str, str]:
        found: dict[str, str] = {}
        if self.patient_id:
            found["PatientID"] = self.patient_id
        if self.date_from or self.date_to:
            start = self.date_from.strftime("%Y%m%d") if self.date_from else ""
            end = self.date_to.strftime("%Y%m%d") if self.date_to else ""
            found["StudyDate"] = start if start == end else f"{start}-{end}"
        if self.modality:
            found["ModalitiesInStudy"] = self.modality
        if self.accession_number:
            found["AccessionNumber"] = self.accession_number
        return found


class StudySummary(BaseModel):
    study_uid: str
    patient_id: str | None = None
    study_date: str | None = None  # DICOM DA, YYYYMMDD
    description: str | None = None
    accession_number: str | None = None
    modalities: list[str] = Field(default_factory=list)
    series_count: int | None = None
    instance_count: int | None = None


class SeriesSummary(BaseModel):
    series_uid: str
    modality: str | None = None
    series_number: int | None = None
    description: str | None = None
    instance_count: int | None = None


def _text(ds: Dataset, keyword: str) -> str | None:
    value = ds.get(keyword)
    return str(value) if value not in (None, "") else None


def _int(ds: Dataset, keyword: str) -> int | None:
    value = ds.get(keyword)
    return int(value) if value not in (None, "") else None


def _study_summary(ds: Dataset) -> StudySummary:
    modalities = ds.get("ModalitiesInStudy") or []
    return StudySummary(
        study_uid=str(ds.StudyInstanceUID),
        patient_id=_text(ds, "PatientID"),
        study_date=_text(ds, "StudyDate"),
        description=_text(ds, "StudyDescription"),
        accession_number=_text(ds, "AccessionNumber"),
        modalities=[modalities] if isinstance(modalities, str) else [str(m) for m in modalities],
        series_count=_int(ds, "NumberOfStudyRelatedSeries"),
        instance_count=_int(ds, "NumberOfStudyRelatedInstances"),
    )


def _series_summary(ds: Dataset) -> SeriesSummary:
    return SeriesSummary(
        series_uid=str(ds.SeriesInstanceUID),
        modality=_text(ds, "Modality"),
        series_number=_int(ds, "SeriesNumber"),
        description=_text(ds, "SeriesDescription"),
        instance_count=_int(ds, "NumberOfSeriesRelatedInstances"),
    )


def _part10(ds: Dataset) -> Dataset:
    """``ds`` as something pydicom writes as a DICOM file (preamble, "DICM", file meta).

    The library writes each dataset as pydicom's defaults have it: without a preamble, no "DICM" and no
    file meta. Orthanc accepts such bytes, stores them as they are, and WADO then serves back something
    no reader takes for DICOM.
    """
    if "TransferSyntaxUID" not in getattr(ds, "file_meta", Dataset()):
        raise ValueError(f"dataset {ds.get('SOPInstanceUID', '?')} has no file meta transfer syntax")
    if getattr(ds, "preamble", None):
        return ds
    framed = copy.copy(ds)  # shallow: the caller's dataset keeps its own (absent) preamble
    framed.preamble = PREAMBLE
    return framed


class PacsClient:
    """QIDO/WADO/STOW against one PACS. Use as a context manager, or call :meth:`close`."""

    def __init__(self, config: PacsConfig) -> None:
        self.config = config
        self._session = requests.Session()
        if config.username is not None and config.password is not None:
            self._session.auth = (config.username, config.password.get_secret_value())
        try:
            self._client = DICOMwebClient(config.root, session=self._session, timeout=config.timeout_s)
        except ValueError as exc:  # a URL the library cannot parse
            self._session.close()
            raise PacsUnavailable(f"unusable DICOMweb URL {config.root}: {exc}") from exc
        self._client.set_http_retry_params(
            retry=config.retries > 0, max_attempts=config.retries + 1, wait_exponential_multiplier=250
        )

    def __enter__(self) -> PacsClient:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        self._session.close()

    @contextmanager
    def _errors(self, action: str, study_uid: str | None = None) -> Iterator[None]:
        where = self.config.root
        try:
            yield
        except requests.Timeout as exc:
            attempts = self.config.retries + 1
            raise PacsTimeout(
                f"PACS at {where} did not answer {action} within {self.config.timeout_s}s "
                f"({attempts} attempt(s))"
            ) from exc
        except requests.ConnectionError as exc:
            raise PacsUnavailable(f"cannot reach the PACS at {where} ({action}): {exc}") from exc
        except requests.HTTPError as exc:
            status = exc.response.status_code if exc.response is not None else 0
            if status == 404 and study_uid is not None:
                raise StudyNotFound(f"no study {study_uid} in the PACS at {where}") from exc
            if status == 404:
                raise PacsUnavailable(f"no DICOMweb service at {where} ({action}: HTTP 404)") from exc
            if status in (401, 403):
                raise PacsRejected(
                    f"the PACS at {where} refused the credentials ({action}: HTTP {status})"
                ) from exc
            if 400 <= status < 500:
                body = exc.response.text[:300] if exc.response is not None else ""
                raise PacsRejected(f"the PACS at {where} refused {action}: HTTP {status} {body}") from exc
            raise PacsUnavailable(f"the PACS at {where} failed {action}: HTTP {status}") from exc
        except requests.RequestException as exc:  # malformed answers, redirects gone wrong, …
            raise PacsUnavailable(f"the PACS at {where} failed {action}: {exc}") from exc
        except InvalidDicomError as exc:
            raise PacsUnavailable(
                f"the PACS at {where} answered {action} with something not DICOM: {exc}"
            ) from exc

    def search_studies(self, query: StudyQuery | None = None) -> list[StudySummary]:
        query = query or StudyQuery()
        with self._errors("a study search"):
            found = self._client.search_for_studies(search_filters=query.filters(), limit=query.limit)
        return [_study_summary(Dataset.from_json(item)) for item in found]

    def search_series(self, study_uid: str) -> list[SeriesSummary]:
        """The series of a study; :class:`StudyNotFound` when it has none (QIDO answers an empty list)."""
        with self._errors("a series search", study_uid):
            found = self._client.search_for_series(_checked_uid(study_uid))
        if not found:
            raise StudyNotFound(f"no study {study_uid} in the PACS at {self.config.root}")
        return [_series_summary(Dataset.from_json(item)) for item in found]

    def retrieve_study(self, study_uid: str) -> list[Dataset]:
        """Every instance of a study, as stored ("*": no transcoding, which may lack a codec)."""
        with self._errors("a study retrieval", study_uid):
            instances = self._client.retrieve_study(
                _checked_uid(study_uid), media_types=(("application/dicom", "*"),)
            )
        if not instances:
            raise StudyNotFound(f"no study {study_uid} in the PACS at {self.config.root}")
        return instances

    def retrieve_series(self, study_uid: str, series_uid: str) -> list[Dataset]:
        """Every instance of one series, as stored; :class:`StudyNotFound` when there is none."""
        with self._errors("a series retrieval", study_uid):
            instances = self._client.retrieve_series(
                _checked_uid(study_uid), _checked_uid(series_uid), media_types=(("application/dicom", "*"),)
            )
        if not instances:
            where = self.config.root
            raise StudyNotFound(f"no series {series_uid} of study {study_uid} in the PACS at {where}")
        return instances

    def instance_metadata(self, study_uid: str, series_uid: str, sop_uid: str) -> Dataset:
        """One instance's header (WADO-RS metadata, no pixels): what an SR copies its patient and study
        modules from, so they are the PACS's own values rather than anything we keep."""
        with self._errors("a metadata retrieval", study_uid):
            found = self._client.retrieve_instance_metadata(
                _checked_uid(study_uid), _checked_uid(series_uid), _checked_uid(sop_uid)
            )
        # Large values come as bulk-data links, which the SR never needs: left out rather than fetched.
        return Dataset.from_json({tag: item for tag, item in found.items() if "BulkDataURI" not in item})

    def store(self, datasets: Sequence[Dataset]) -> list[str]:
        """STOW the datasets; returns the stored SOP Instance UIDs, or raises :class:`PacsRejected`."""
        with self._errors(f"storing {len(datasets)} instance(s)"):
            answer = self._client.store_instances([_part10(ds) for ds in datasets])
        failed = answer.get("FailedSOPSequence") or []
        if failed:
            reasons = ", ".join(
                f"{item.get('ReferencedSOPInstanceUID')}: {item.get('FailureReason')}" for item in failed
            )
            raise PacsRejected(f"the PACS refused {len(failed)} of {len(datasets)} instance(s): {reasons}")
        return [str(item.ReferencedSOPInstanceUID) for item in answer.get("ReferencedSOPSequence") or []]


# --- building what we store back -------------------------------------------------------------------------

# Patient and General Study modules, copied from the source so the new series lands in the same study.
_PATIENT_STUDY = (
    "PatientName",
    "PatientID",
    "IssuerOfPatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyInstanceUID",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
    "StudyID",
    "AccessionNumber",
    "StudyDescription",
)
# Type 2: present even when empty.
_REQUIRED_EMPTY = {
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
    "StudyID",
    "AccessionNumber",
}


def _new_instance(sop_class: str, source: Dataset, now: datetime) -> Dataset:
    ds = Dataset()
    ds.preamble = PREAMBLE
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds.SpecificCharacterSet = "ISO_IR 192"  # UTF-8: findings may be in any language
    ds.SOPClassUID = sop_class
    ds.InstanceCreationDate = ds.ContentDate = now.strftime("%Y%m%d")
    ds.InstanceCreationTime = ds.ContentTime = now.strftime("%H%M%S")
    for keyword in _PATIENT_STUDY:
        value = source.get(keyword)
        if value is not None:
            # Names as text, so they are re-encoded in our character set rather than the source's.
            setattr(ds, keyword, str(value) if isinstance(value, PersonName) else copy.deepcopy(value))
        elif keyword in _REQUIRED_EMPTY:
            setattr(ds, keyword, "")
    return ds


def _code(value: str, scheme: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, scheme, meaning
    return item


def _content_item(relationship: str, value_type: str, concept: Dataset, **value: Any) -> Dataset:
    item = Dataset()
    item.RelationshipType = relationship
    item.ValueType = value_type
    item.ConceptNameCodeSequence = [concept]
    for keyword, content in value.items():
        setattr(item, keyword, content)
    return item


def _device_observer(p: ReadProvenance) -> list[Dataset]:
    """Observation context (TID 1002/1004): the AI is the observer that wrote the content."""
    uid = generate_uid(entropy_srcs=[p.model, p.plugin, p.adapter_version])  # stable per model version
    return [
        _content_item(
            "HAS OBS CONTEXT",
            "CODE",
            _code("121005", "DCM", "Observer Type"),
            ConceptCodeSequence=[_code("121007", "DCM", "Device")],
        ),
        _content_item("HAS OBS CONTEXT", "UIDREF", _code("121012", "DCM", "Device Observer UID"), UID=uid),
        _content_item(
            "HAS OBS CONTEXT", "TEXT", _code("121013", "DCM", "Device Observer Name"), TextValue=p.model
        ),
        _content_item(
            "HAS OBS CONTEXT",
            "TEXT",
            _code("121015", "DCM", "Device Observer Model Name"),
            TextValue=f"{p.model} ({p.plugin} H-LoRA, adapter {p.adapter_version})",
        ),
    ]


def _evidence(sources: Sequence[Dataset]) -> list[Dataset]:
    """The source instances, grouped Study > Series > SOP, as the SR's evidence."""
    by_study: dict[str, dict[str, list[Dataset]]] = {}
    for ds in sources:
        by_study.setdefault(str(ds.StudyInstanceUID), {}).setdefault(str(ds.SeriesInstanceUID), []).append(ds)
    studies = []
    for study_uid, series in by_study.items():
        study = Dataset()
        study.StudyInstanceUID = study_uid
        study.ReferencedSeriesSequence = []
        for series_uid, instances in series.items():
            item = Dataset()
            item.SeriesInstanceUID = series_uid
            item.ReferencedSOPSequence = []
            for ds in instances:
                sop = Dataset()
                sop.ReferencedSOPClassUID, sop.ReferencedSOPInstanceUID = ds.SOPClassUID, ds.SOPInstanceUID
                item.ReferencedSOPSequence.append(sop)
            study.ReferencedSeriesSequence.append(item)
        studies.append(study)
    return studies


@dataclass(frozen=True)
class SrReference:
    """Where a stored SR is: what an amended SR names as the document it replaces."""

    study_uid: str
    series_uid: str
    sop_uid: str
    sop_class: str = BASIC_TEXT_SR


def _predecessor(ref: SrReference) -> Dataset:
    sop = Dataset()
    sop.ReferencedSOPClassUID, sop.ReferencedSOPInstanceUID = ref.sop_class, ref.sop_uid
    series = Dataset()
    series.SeriesInstanceUID = ref.series_uid
    series.ReferencedSOPSequence = [sop]
    study = Dataset()
    study.StudyInstanceUID = ref.study_uid
    study.ReferencedSeriesSequence = [series]
    return study


def build_text_sr(
    read: ReadReport,
    sources: Sequence[Dataset],
    *,
    organization: str = MANUFACTURER,
    series_number: int = 9000,
    sop_instance_uid: str | None = None,
    series_uid: str | None = None,
    replaces: SrReference | None = None,
) -> Dataset:
    """The read as a Basic Text SR in a new series of the read's study, referencing ``sources``.

    Unsigned: ``PreliminaryFlag`` PRELIMINARY, ``VerificationFlag`` UNVERIFIED. Signed (final/amended):
    FINAL and VERIFIED, with the physician as verifying observer of ``organization``. ``CompletionFlag``
    is COMPLETE either way: the AI's content is whole; whether a physician stands behind it is what the
    other two flags say. The model's confidence has no place in a Basic Text SR and is left to FHIR.

    ``sop_instance_uid`` and ``series_uid`` fix the new instance's UIDs (an outbox that retries a push
    sends the same instance again, which the PACS stores once); ``replaces`` names the SR an amended
    report supersedes (Predecessor Documents Sequence).
    """
    if not sources:
        raise ValueError("an SR needs at least one source instance of the study")
    foreign = {str(ds.StudyInstanceUID) for ds in sources} - {read.study_uid}
    if foreign:
        raise ValueError(f"sources from other studies than {read.study_uid}: {sorted(foreign)}")
    now = datetime.now(UTC)
    p = read.provenance
    ds = _new_instance(BASIC_TEXT_SR, sources[0], now)
    ds.ContentDate, ds.ContentTime = read.read_at.strftime("%Y%m%d"), read.read_at.strftime("%H%M%S")

    # SR Document Series and General Equipment.
    if sop_instance_uid is not None:
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = _checked_uid(sop_instance_uid)
    ds.Modality = "SR"
    ds.SeriesInstanceUID = _checked_uid(series_uid) if series_uid is not None else generate_uid()
    ds.SeriesNumber = series_number
    ds.SeriesDescription = f"AI read ({p.model})"[:64]
    ds.ReferencedPerformedProcedureStepSequence = []
    ds.Manufacturer = MANUFACTURER
    ds.ManufacturerModelName = p.model[:64]
    ds.SoftwareVersions = [p.plugin[:64], p.adapter_version[:64]]

    # SR Document General.
    ds.InstanceNumber = 1
    ds.CompletionFlag = "COMPLETE"
    signed = read.signed_by is not None and read.signed_at is not None
    ds.PreliminaryFlag = "FINAL" if signed else "PRELIMINARY"
    ds.VerificationFlag = "VERIFIED" if signed else "UNVERIFIED"
    if read.signed_by is not None and read.signed_at is not None:
        observer = Dataset()
        observer.VerifyingObserverName = read.signed_by.name
        observer.VerifyingObserverIdentificationCodeSequence = [
            _code(read.signed_by.id[:16], LOCAL_SCHEME, read.signed_by.name[:64])
        ]
        observer.VerifyingOrganization = organization[:64]
        observer.VerificationDateTime = read.signed_at.astimezone(UTC).strftime("%Y%m%d%H%M%S+0000")
        ds.VerifyingObserverSequence = [observer]
    ds.PerformedProcedureCodeSequence = []
    ds.CurrentRequestedProcedureEvidenceSequence = _evidence(sources)
    if replaces is not None:
        ds.PredecessorDocumentsSequence = [_predecessor(replaces)]

    # SR Document Content: the root CONTAINER with the observer context, findings and impression.
    ds.ValueType = "CONTAINER"
    ds.ConceptNameCodeSequence = [_code("18748-4", "LN", "Diagnostic imaging report")]
    ds.ContinuityOfContent = "SEPARATE"
    ds.ContentSequence = [
        *_device_observer(p),
        _content_item("CONTAINS", "TEXT", _code("121071", "DCM", "Finding"), TextValue=read.findings),
        _content_item("CONTAINS", "TEXT", _code("121073", "DCM", "Impression"), TextValue=read.impression),
    ]
    return ds


def sr_text(ds: Dataset) -> dict[str, str]:
    """The TEXT items of an SR's root container by concept meaning (Finding, Impression, …)."""
    return {
        str(item.ConceptNameCodeSequence[0].CodeMeaning): str(item.TextValue)
        for item in ds.get("ContentSequence") or []
        if item.ValueType == "TEXT" and item.RelationshipType == "CONTAINS"
    }


def _pixels(image: np.ndarray | Image.Image) -> np.ndarray:
    if isinstance(image, Image.Image):
        image = np.asarray(image if image.mode in ("L", "RGB") else image.convert("RGB"))
    if image.dtype != np.uint8:
        raise ValueError(f"a secondary capture takes uint8 pixels, not {image.dtype}")
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if not (image.ndim == 2 or (image.ndim == 3 and image.shape[2] == 3)):
        raise ValueError(f"expected an (H, W) or (H, W, 3) image, got shape {image.shape}")
    if min(image.shape[:2]) < 1 or max(image.shape[:2]) > 65535:
        raise ValueError(f"image size {image.shape[:2]} is outside what DICOM rows/columns can hold")
    return np.ascontiguousarray(image)


def _image_reference(source: Dataset, frame: int | None) -> Dataset:
    reference = Dataset()
    reference.ReferencedSOPClassUID = source.SOPClassUID
    reference.ReferencedSOPInstanceUID = source.SOPInstanceUID
    frames = int(source.get("NumberOfFrames") or 1)
    if frame is not None and frames > 1 and 1 <= frame <= frames:
        reference.ReferencedFrameNumber = frame
    return reference


def build_secondary_capture(
    image: np.ndarray | Image.Image,
    source: Dataset,
    provenance: ReadProvenance,
    *,
    series_uid: str | None = None,
    series_number: int = 9001,
    instance_number: int = 1,
    description: str | None = None,
    derivation: str | None = None,
    sop_instance_uid: str | None = None,
    source_frame: int | None = None,
) -> Dataset:
    """A generated image (uint8, (H, W) or (H, W, 3), or a PIL image) as a Secondary Capture of conversion
    type SYN (synthetic) in ``source``'s study.

    Pass the same ``series_uid`` for every image of one generation to keep them in one series; by
    default each call opens a new series. ``DerivationDescription`` names what was done (``derivation``,
    e.g. "CT-to-MRI conversion of the referenced image") and the model, plugin and adapter.
    ``sop_instance_uid`` fixes the instance's UID (a retried push stores the same instance again, which
    the PACS keeps once); ``source_frame`` names the frame of a multi-frame source it was made from.
    """
    pixels = _pixels(image)
    p = provenance
    ds = _new_instance(SECONDARY_CAPTURE, source, datetime.now(UTC))
    if sop_instance_uid is not None:
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = _checked_uid(sop_instance_uid)

    ds.Modality = "OT"
    ds.SeriesInstanceUID = _checked_uid(series_uid) if series_uid is not None else generate_uid()
    ds.SeriesNumber = series_number
    ds.SeriesDescription = (description or f"AI generated ({p.model})")[:64]
    ds.ConversionType = "SYN"
    ds.SecondaryCaptureDeviceManufacturer = MANUFACTURER
    ds.SecondaryCaptureDeviceManufacturerModelName = p.model[:64]
    ds.SecondaryCaptureDeviceSoftwareVersions = [p.plugin[:64], p.adapter_version[:64]]

    ds.InstanceNumber = instance_number
    ds.PatientOrientation = ""
    ds.ImageType = ["DERIVED", "SECONDARY"]
    made = f"{derivation} by" if derivation else "Synthetic image generated by"
    ds.DerivationDescription = (
        f"{made} {p.model} (H-LoRA plugin {p.plugin}, adapter {p.adapter_version}); "
        "synthetic, not an acquisition."
    )[:1024]
    ds.BurnedInAnnotation = "NO"
    ds.LossyImageCompression = "00"
    if "SOPInstanceUID" in source and "SOPClassUID" in source:
        # Source Image: what it was derived from; Referenced Image: the same instance, for viewers that
        # offer a related image from the general image module only.
        ds.SourceImageSequence = [_image_reference(source, source_frame)]
        ds.ReferencedImageSequence = [_image_reference(source, source_frame)]

    ds.Rows, ds.Columns = int(pixels.shape[0]), int(pixels.shape[1])
    ds.SamplesPerPixel = 1 if pixels.ndim == 2 else 3
    ds.PhotometricInterpretation = "MONOCHROME2" if pixels.ndim == 2 else "RGB"
    if pixels.ndim == 3:
        ds.PlanarConfiguration = 0  # R G B R G B …, numpy's (H, W, 3) order
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    data = pixels.tobytes()
    ds.PixelData = data + b"\0" if len(data) % 2 else data  # DICOM values have even length
    ds["PixelData"].VR = "OB"
    return ds
