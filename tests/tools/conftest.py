"""A real Orthanc with the DICOMweb plugin, started once per test session (Debian packages ``orthanc`` and
``orthanc-dicomweb``; ``.ci/run`` installs them). Missing packages skip, or fail under
HEALTHAGENT_REQUIRE_SERVICES=1. ORTHANC_BIN and ORTHANC_DICOMWEB_PLUGIN point at other installs."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import service_unavailable

STARTUP_TIMEOUT_S = 30.0
PLUGIN_CANDIDATES = (
    "/usr/share/orthanc/plugins/libOrthancDicomWeb.so",
    "/usr/lib/orthanc/libOrthancDicomWeb.so",
)


def _orthanc_binary() -> str | None:
    if "ORTHANC_BIN" in os.environ:  # an explicit choice: no fallback to another install
        return shutil.which(os.environ["ORTHANC_BIN"])
    # /usr/sbin is often not on a non-root PATH.
    return shutil.which("Orthanc") or shutil.which("Orthanc", path="/usr/sbin")


def _dicomweb_plugin() -> str | None:
    if "ORTHANC_DICOMWEB_PLUGIN" in os.environ:
        candidates = [os.environ["ORTHANC_DICOMWEB_PLUGIN"]]
    else:
        candidates = [
            *PLUGIN_CANDIDATES,
            *sorted(map(str, Path("/usr/lib/orthanc").glob("libOrthancDicomWeb.so*"))),
        ]
    return next((c for c in candidates if Path(c).is_file()), None)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _log_tail(path: Path) -> str:
    return path.read_text(errors="replace")[-2000:] if path.exists() else "(no log)"


class OrthancServer:
    """A private Orthanc on a fixed port and storage, which a test may stop and start again (the PACS
    going away and coming back with its studies)."""

    def __init__(self, home: Path) -> None:
        binary, plugin = _orthanc_binary(), _dicomweb_plugin()
        if binary is None:
            service_unavailable("Orthanc is not installed (apt-get install orthanc orthanc-dicomweb)")
        if plugin is None:
            service_unavailable(
                "the Orthanc DICOMweb plugin is not installed (apt-get install orthanc-dicomweb)"
            )
        self.binary, self.home, self.port = binary, home, _free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.log = home / "orthanc.log"
        self._process: subprocess.Popen[bytes] | None = None
        config = {
            "Name": "healthagent-test",
            "StorageDirectory": str(home / "storage"),
            "IndexDirectory": str(home / "index"),
            "HttpPort": self.port,
            "DicomServerEnabled": False,  # DICOMweb only: no DIMSE port to collide with
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "Plugins": [plugin],
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
        }
        (home / "orthanc.json").write_text(json.dumps(config, indent=2))

    def start(self) -> str:
        with self.log.open("ab") as sink:
            self._process = subprocess.Popen(
                [self.binary, str(self.home / "orthanc.json")], stdout=sink, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while True:
            if self._process.poll() is not None:
                pytest.fail(
                    f"Orthanc exited with {self._process.returncode} at startup:\n{_log_tail(self.log)}"
                )
            try:
                if httpx.get(f"{self.base}/system", timeout=1.0).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"Orthanc did not answer within {STARTUP_TIMEOUT_S:.0f}s:\n{_log_tail(self.log)}")
            time.sleep(0.1)
        if httpx.get(f"{self.base}/dicom-web/studies", timeout=5.0).status_code != 200:
            pytest.fail(f"Orthanc runs but its DICOMweb plugin does not answer:\n{_log_tail(self.log)}")
        return self.base

    def stop(self) -> None:
        if self._process is None:
            return
        self._process.terminate()
        try:
            self._process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
        self._process = None


@pytest.fixture(scope="session")
def orthanc_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Base URL of a private Orthanc (REST at the root, DICOMweb under /dicom-web)."""
    server = OrthancServer(tmp_path_factory.mktemp("orthanc"))
    try:
        yield server.start()
    finally:
        server.stop()
