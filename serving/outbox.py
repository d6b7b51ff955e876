"""Delivering signed reports (DICOM SR) and accepted generated images (Secondary Capture) to the PACS: one
attempt right after sign-off or acceptance, then a background worker in each gateway replica that retries
what is pending, with exponential back-off, until the PACS has it.

Replicas share the table: an attempt first claims its push for a lease (memory.outbox.claim), so two
replicas never send the same push at once; and a push's SR UIDs are fixed, so a push sent again after a
lost acknowledgement is stored once by the PACS. The worker also enqueues signed reads that have no push
yet (a sign-off from the web pages, a gateway stopped between signing and enqueueing).
"""

from __future__ import annotations

import io
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from PIL import Image
from pydicom.dataset import Dataset
from sqlalchemy import select

from memory import outbox
from memory.db import transaction
from memory.pixels import PixelStore, PixelStoreError
from memory.schema import DerivedImage, PacsImport, PushKind, Read, ReportPush
from serving.settings import PacsSettings
from tools.pacs import PacsClient, PacsError, SrReference, build_secondary_capture, build_text_sr

if TYPE_CHECKING:
    from sqlalchemy.orm import Session, sessionmaker

log = logging.getLogger(__name__)

LEASE_S = 120.0  # longer than one attempt can take: (retries + 1) × timeout, plus the SR's metadata


@dataclass(frozen=True)
class PushState:
    """What a read shows about its report in the PACS."""

    status: str  # pending | delivered
    report_status: str  # final | amended
    attempts: int
    sr_uid: str
    last_error: str


def state_of(push: ReportPush) -> PushState:
    # The error is the worker's own summary (no addresses: see _attempt), safe to show a physician.
    return PushState(str(push.status), push.report_status, push.attempts, push.sr_uid, push.last_error)


@dataclass(frozen=True)
class _Origin:
    study_uid: str
    series_uid: str
    instances: list[list[str]]

    @classmethod
    def of(cls, row: PacsImport | None) -> _Origin | None:
        return None if row is None else cls(row.study_uid, row.series_uid, list(row.instances))


@dataclass(frozen=True)
class _Job:
    """One attempt's inputs, read in the claiming transaction (no rows outlive it)."""

    kind: PushKind
    payload: dict[str, Any]
    sr_uid: str  # the instance's UID: the SR's, or the secondary capture's
    series_uid: str
    origin: _Origin | None


def _origin_row(session: Session, push: ReportPush) -> PacsImport | None:
    """Where the push's study came from: the study of its read, or of its derived image."""
    subject = DerivedImage if push.kind is PushKind.sc else Read
    key = push.image_id if push.kind is PushKind.sc else push.read_id
    return session.scalar(
        select(PacsImport).join(subject, subject.study_id == PacsImport.study_id).where(subject.id == key)
    )


def _referenced(origin: _Origin, slices_read: list[int]) -> list[list[str]]:
    """The original instances the read looked at: slice n of a series is its n-th instance; a single
    (multi-frame) object is itself; a read that names no slices looked at the middle one."""
    instances = origin.instances
    if len(instances) == 1:
        return instances
    picked = [instances[n - 1] for n in slices_read if 1 <= n <= len(instances)]
    return picked or [instances[len(instances) // 2]]


class ReportOutbox:
    """The pushes of one gateway: ``deliver`` one now, or let the worker thread retry them."""

    def __init__(
        self, sessions: sessionmaker[Session], settings: PacsSettings, pixels: PixelStore | None = None
    ) -> None:
        self.sessions = sessions
        self.settings = settings
        self.pixels = pixels  # where an accepted image's PNG is (secondary captures only)
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- one attempt -----------------------------------------------------------------------------------
    def deliver(self, push_id: int) -> bool:
        """Try ``push_id`` once; True when the PACS has it. A failure is recorded with the next attempt's
        time, never raised: the push stays pending and the worker tries again."""
        if not self.settings.configured:
            return False
        with transaction(self.sessions) as session:
            if not outbox.claim(session, push_id, LEASE_S):
                return False  # delivered already, or another replica is on it
            push = outbox.get(session, push_id)
            origin = _Origin.of(_origin_row(session, push))
            job = _Job(push.kind, dict(push.payload), push.sr_uid, push.sr_series_uid, origin)
        error = self._attempt(job) if job.kind is PushKind.sr else self._attempt_capture(job)
        with transaction(self.sessions) as session:
            if error is None:
                outbox.delivered(session, push_id)
                log.info("report push %s delivered (SR %s)", push_id, job.sr_uid)
                return True
            when = outbox.failed(
                session, push_id, error, self.settings.retry_initial_s, self.settings.retry_max_s
            )
        log.warning("report push %s failed: %s; next attempt at %s", push_id, error, when.isoformat())
        return False

    def _attempt(self, job: _Job) -> str | None:
        from serving.reports import pushed_report

        payload, origin = job.payload, job.origin
        if origin is None:
            return "the imported study's origin is gone"

        def build(pacs: PacsClient) -> Dataset:
            referenced = _referenced(origin, list(payload.get("slices_read") or []))
            # The patient and study modules come from the PACS's own header of the read images.
            sources = [
                pacs.instance_metadata(origin.study_uid, origin.series_uid, sop) for _, sop in referenced
            ]
            replaces = payload.get("replaces")
            return build_text_sr(
                pushed_report(payload, origin.study_uid),
                sources,
                organization=self.settings.organization,
                sop_instance_uid=job.sr_uid,
                series_uid=job.series_uid,
                replaces=SrReference(origin.study_uid, replaces["series_uid"], replaces["sr_uid"])
                if replaces
                else None,
            )

        return self._store("report", build)

    def _store(self, what: str, build: Callable[[PacsClient], Dataset]) -> str | None:
        """Build one instance (from the PACS's own headers) and store it: None, or why it failed."""
        try:
            with PacsClient(self.settings.client_config()) as pacs:
                pacs.store([build(pacs)])
        except PacsError as exc:
            return f"{type(exc).__name__}: the PACS could not take the {what}"
        except ValueError as exc:  # one that cannot be built: kept pending, visible, never dropped
            return f"the {what} could not be built: {str(exc)[:300]}"
        return None

    def _generated(self, key: str) -> Image.Image | str:
        """The accepted image's pixels, or why they cannot be had."""
        if self.pixels is None:
            return "this gateway has no pixel store to read the generated image from"
        try:
            picture = Image.open(io.BytesIO(self.pixels.get(key)))
            picture.load()
        except (PixelStoreError, OSError) as exc:
            return f"the generated image could not be read: {str(exc)[:300]}"
        return picture

    def _attempt_capture(self, job: _Job) -> str | None:
        """An accepted generated image as a Secondary Capture of the ORIGINAL study, referencing the
        original instance of the slice it was generated from."""
        from serving.reports import pushed_capture

        payload, origin = job.payload, job.origin
        if origin is None:
            return "the imported study's origin is gone"
        picture = self._generated(str(payload.get("pixel_key") or ""))
        if isinstance(picture, str):
            return picture
        number = int(payload.get("source_slice") or 0)
        _, sop = _referenced(origin, [number])[0]
        words = pushed_capture(payload)

        def build(pacs: PacsClient) -> Dataset:
            return build_secondary_capture(
                picture,
                pacs.instance_metadata(origin.study_uid, origin.series_uid, sop),
                words.provenance,
                series_uid=job.series_uid,
                sop_instance_uid=job.sr_uid,
                description=words.description,
                derivation=words.derivation,
                # A single original object is multi-frame or one picture: slice n is its frame n.
                source_frame=number if len(origin.instances) == 1 else None,
            )

        return self._store("secondary capture", build)

    # -- the worker --------------------------------------------------------------------------------------
    def enqueue_missing(self) -> list[int]:
        """Pushes for signed reads of imported studies that have none for their current signature."""
        with transaction(self.sessions) as session:
            pushes = [outbox.enqueue(session, read) for read in outbox.unqueued_signed_reads(session)]
            return [p.id for p in pushes if p is not None]

    def run_once(self) -> int:
        """Enqueue what is missing, then try every push that is due; how many were delivered."""
        self.enqueue_missing()
        with transaction(self.sessions) as session:
            due = outbox.due(session)
        return sum(self.deliver(push_id) for push_id in due if not self._stop.is_set())

    def kick(self) -> None:
        """Look now rather than at the next poll (after a sign-off, in tests)."""
        self._wake.set()

    def start(self) -> None:
        if self._thread is not None or not self.settings.configured:
            return
        self._thread = threading.Thread(target=self._loop, name="report-outbox", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.run_once()
            except Exception:
                log.exception("report outbox pass failed; retrying at the next poll")
            self._wake.wait(self.settings.outbox_poll_s)
            self._wake.clear()

    def close(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
            self._thread = None
