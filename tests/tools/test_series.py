"""Reads over a series: the slices chosen, the merged draft that cites them, the report's sections, and
the SR of an amended report (fixed UIDs, the predecessor it replaces)."""

from __future__ import annotations

from datetime import UTC, datetime

import pydicom
from pydicom.data import get_testdata_file

from tools.fhir import ReadProvenance, ReadReport, Signer, report_sections
from tools.pacs import BASIC_TEXT_SR, SrReference, build_text_sr
from tools.series import SliceFinding, chosen_slices, merged_findings, series_draft


def test_chosen_slices_are_evenly_spaced_with_both_ends() -> None:
    assert chosen_slices(1, 8) == [0]
    assert chosen_slices(12, 1) == [6]
    assert chosen_slices(12, 4) == [0, 4, 7, 11]
    assert chosen_slices(3, 8) == [0, 1, 2]


def test_merged_findings_say_each_statement_once_with_its_slices() -> None:
    findings = [SliceFinding(1, "Clear."), SliceFinding(5, "Nodule 4 mm."), SliceFinding(9, "Clear.")]
    assert merged_findings(findings, 12) == "- Slices 1, 9 of 12: Clear.\n- Slice 5 of 12: Nodule 4 mm."
    draft = series_draft(findings, "No acute finding.", 5, 12, -1.25)
    assert draft.startswith("Findings (3 of 12 slices read: 1, 5, 9):")
    assert "Impression (slice 5): No acute finding." in draft
    assert report_sections(draft) == (merged_findings(findings, 12), "No acute finding.")


def test_report_sections_of_free_text() -> None:
    assert report_sections("No acute findings.") == ("No acute findings.", "See findings.")
    assert report_sections("Findings: a\nb\nImpression: c") == ("a\nb", "c")


def test_amended_sr_has_fixed_uids_and_names_its_predecessor() -> None:
    source = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    read = ReadReport(
        study_uid=str(source.StudyInstanceUID),
        modality="CT",
        patient_reference="Patient/1",
        findings="f",
        impression="i",
        provenance=ReadProvenance(model="m", plugin="comprehension", adapter_version="v1"),
        read_at=datetime(2025, 1, 1, tzinfo=UTC),
    ).sign(Signer(id="7", name="dr_doe"), datetime(2025, 1, 2, tzinfo=UTC))
    amended = read.sign(Signer(id="7", name="dr_doe"), datetime(2025, 1, 3, tzinfo=UTC), findings="g")
    assert amended.status == "amended"
    earlier = SrReference(str(source.StudyInstanceUID), "2.25.1", "2.25.2")
    sr = build_text_sr(amended, [source], sop_instance_uid="2.25.3", series_uid="2.25.1", replaces=earlier)
    assert sr.SOPInstanceUID == sr.file_meta.MediaStorageSOPInstanceUID == "2.25.3"
    assert sr.SeriesInstanceUID == "2.25.1" and sr.PreliminaryFlag == "FINAL"
    item = sr.PredecessorDocumentsSequence[0]
    assert item.StudyInstanceUID == source.StudyInstanceUID
    sop = item.ReferencedSeriesSequence[0].ReferencedSOPSequence[0]
    assert (sop.ReferencedSOPClassUID, sop.ReferencedSOPInstanceUID) == (BASIC_TEXT_SR, "2.25.2")
