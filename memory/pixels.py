"""Content-addressed pixel store: a file's key is the SHA-256 of its bytes.

The same bytes stored twice are kept once. Writes go to a temporary file in the target folder, are
flushed to disk, then renamed into place, so a reader never sees a half-written file and a crash leaves
at most a stray temporary file (swept by :meth:`PixelStore.sweep`).
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
import time
from pathlib import Path

_KEY = re.compile(r"[0-9a-f]{64}")
_TMP_PREFIX = ".incoming-"


class PixelStoreError(ValueError):
    """A bad key, a missing object, or an object whose bytes no longer match its key."""


class PixelStore:
    def __init__(self, root: str | Path, max_bytes: int = 512 * 1024 * 1024) -> None:
        self.root = Path(root).resolve()
        self.max_bytes = max_bytes
        self.root.mkdir(parents=True, exist_ok=True)

    def _path(self, key: str) -> Path:
        # The key becomes a path: accept nothing but a digest, so no key can climb out of the root.
        if not _KEY.fullmatch(key):
            raise PixelStoreError(f"not a pixel-store key: {key[:80]!r}")
        return self.root / key[:2] / key[2:4] / key

    def put(self, data: bytes) -> str:
        """Store ``data``; returns its key. Storing the same bytes again writes nothing."""
        if len(data) > self.max_bytes:
            raise PixelStoreError(f"object of {len(data)} bytes exceeds the limit of {self.max_bytes}")
        key = hashlib.sha256(data).hexdigest()
        path = self._path(key)
        if path.is_file() and path.stat().st_size == len(data):
            return key
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=_TMP_PREFIX, dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.chmod(tmp, 0o640)
            os.replace(tmp, path)  # atomic; a concurrent writer of the same key wrote the same bytes
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        _fsync_dir(path.parent)
        return key

    def get(self, key: str, verify: bool = True) -> bytes:
        path = self._path(key)
        try:
            data = path.read_bytes()
        except FileNotFoundError as exc:
            raise PixelStoreError(f"no object {key}") from exc
        if verify and hashlib.sha256(data).hexdigest() != key:
            raise PixelStoreError(f"object {key} is corrupt: its bytes no longer match its key")
        return data

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def path(self, key: str) -> Path:
        """Where the object lies (for readers that stream from disk)."""
        path = self._path(key)
        if not path.is_file():
            raise PixelStoreError(f"no object {key}")
        return path

    def delete(self, key: str) -> bool:
        try:
            self._path(key).unlink()
            return True
        except FileNotFoundError:
            return False

    def sweep(self, older_than_s: float = 3600.0) -> int:
        """Remove temporary files left by writers that died mid-write; returns how many."""
        cutoff = time.time() - older_than_s
        removed = 0
        for tmp in self.root.glob(f"*/*/{_TMP_PREFIX}*"):
            if tmp.stat().st_mtime < cutoff:
                tmp.unlink(missing_ok=True)
                removed += 1
        return removed


def _fsync_dir(path: Path) -> None:
    # The rename is durable only once the directory entry is on disk.
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
