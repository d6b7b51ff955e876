"""Shared fixtures: the tiny model, and both databases.

Service-backed fixtures read TEST_DATABASE_URL / TEST_REDIS_URL. Without them the tests skip, unless
HEALTHAGENT_REQUIRE_SERVICES=1 (as .ci/run sets), where a missing or unreachable service fails.
"""

from __future__ import annotations

import os

# One instruction-set path for float32 products, whatever the CPU: MKL's and oneDNN's AVX-512 kernels
# add the same terms in another order than their AVX2 kernels, and the official fixtures' bound (1e-4 on
# logits up to 21) is tight enough to see it: on an AVX-512 machine com_image_fusion came out at 1.9e-4
# (normwise 3e-6: rounding, not a different computation), 7.6e-5 on the AVX2 path. (Two other tests it
# moved there, a gradient-accumulation comparison and a short fine-tune's learned answer, now pass on
# both paths.) On an AMD CPU MKL keeps its own path whatever this says, and on some Intel CPUs the pin
# alone still leaves a case above 1e-4, so the parity test's logits bound is measured across paths
# (tests/models/test_official_parity.py). Both libraries read these at
# their first product, so they are set before torch is imported; a caller may choose otherwise.
os.environ.setdefault("MKL_CBWR", "AVX2")
os.environ.setdefault("ONEDNN_MAX_CPU_ISA", "AVX2")

import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from memory.db import normalise_url
from models.healthgpt import HealthGPT
from models.spec import ModelSpec
from models.tiny import build_tiny

REQUIRE_SERVICES = os.environ.get("HEALTHAGENT_REQUIRE_SERVICES") == "1"


def service_unavailable(reason: str) -> None:
    if REQUIRE_SERVICES:
        pytest.fail(f"{reason} (HEALTHAGENT_REQUIRE_SERVICES=1: service-backed tests must run)")
    pytest.skip(reason)


# ../shared/fixtures beside the checkout, or wherever HEALTHAGENT_FIXTURES points.
OFFICIAL_TINY = (
    Path(
        os.environ.get("HEALTHAGENT_FIXTURES") or Path(__file__).resolve().parents[2] / "shared" / "fixtures"
    )
    / "official-tiny"
)


@pytest.fixture(scope="session")
def official_tiny() -> Path:
    """The golden outputs of the official HealthGPT code on tiny random weights (read, never copied)."""
    if not (OFFICIAL_TINY / "healthgpt.yaml").is_file():
        service_unavailable(f"official fixtures not found at {OFFICIAL_TINY} (set HEALTHAGENT_FIXTURES)")
    return OFFICIAL_TINY


@pytest.fixture
def one_thread() -> Iterator[None]:
    """Torch on one thread for the test (modules opt in with ``usefixtures``): on a shared 2-core
    machine one thread is several times faster for tiny matrices, and training on one leaves the other
    core to a server or browser the test drives."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny_spec(tmp_path_factory: pytest.TempPathFactory) -> ModelSpec:
    return ModelSpec.from_yaml(build_tiny(tmp_path_factory.mktemp("models") / "tiny-seed0", seed=0))


@pytest.fixture(scope="session")
def tiny_model(tiny_spec: ModelSpec) -> HealthGPT:
    return HealthGPT(tiny_spec)


def _postgres_schema_url(base_url: str) -> Iterator[str]:
    """A fresh PostgreSQL schema per test, so runs never see each other's tables."""
    url = normalise_url(base_url)
    schema = f"t_{uuid.uuid4().hex[:12]}"
    admin = create_engine(url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as connection:
            connection.execute(text(f'CREATE SCHEMA "{schema}"'))
    except Exception as exc:  # noqa: BLE001 - any connection failure means the service is unusable
        admin.dispose()
        service_unavailable(f"PostgreSQL at TEST_DATABASE_URL is unreachable: {exc}")
    scoped = make_url(url).update_query_dict({"options": f"-csearch_path={schema}"})
    try:
        yield scoped.render_as_string(hide_password=False)
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


@pytest.fixture
def postgres_url() -> Iterator[str]:
    base = os.environ.get("TEST_DATABASE_URL")
    if not base:
        service_unavailable("TEST_DATABASE_URL is not set")
    yield from _postgres_schema_url(base)


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.services)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """Each test using this runs once on SQLite and once on PostgreSQL."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'test.db'}"
    else:
        yield request.getfixturevalue("postgres_url")


@pytest.fixture
def redis_url() -> str:
    url = os.environ.get("TEST_REDIS_URL")
    if not url:
        service_unavailable("TEST_REDIS_URL is not set")
    return url


# -- a test run never changes the project's files ------------------------------------------------------
_REPO = Path(__file__).resolve().parents[1]


def _worktree_state() -> str | None:
    """Tracked and untracked (not ignored) files with their content hashes; None outside a git checkout."""
    try:
        listed = subprocess.run(
            ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            cwd=_REPO,
            capture_output=True,
            check=True,
        ).stdout.split(b"\0")
        paths = [p.decode() for p in listed if p and (_REPO / p.decode()).is_file()]
        hashed = (
            subprocess.run(
                ["git", "hash-object", "--stdin-paths"],
                cwd=_REPO,
                input="\n".join(paths).encode(),
                capture_output=True,
                check=True,
            )
            .stdout.decode()
            .split()
        )
    except (OSError, subprocess.CalledProcessError):
        return None
    return "\n".join(f"{h} {p}" for h, p in zip(hashed, paths, strict=True))


def pytest_sessionstart(session: pytest.Session) -> None:
    session.config._worktree_before = _worktree_state()  # type: ignore[attr-defined]


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    before = getattr(session.config, "_worktree_before", None)
    after = _worktree_state()
    if before is None or after is None or before == after:
        return
    changed = sorted(set(before.splitlines()) ^ set(after.splitlines()))
    names = sorted({line.split(" ", 1)[1] for line in changed})
    print(f"\nERROR: the test run changed the project's files: {names[:20]}")
    session.exitstatus = pytest.ExitCode.TESTS_FAILED
