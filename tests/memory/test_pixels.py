from __future__ import annotations

import hashlib
import os
import threading
import time
from pathlib import Path

import pytest

from memory.pixels import PixelStore, PixelStoreError


def test_round_trip_and_the_key_is_the_content_hash(tmp_path: Path) -> None:
    store = PixelStore(tmp_path)
    data = os.urandom(5000)
    key = store.put(data)
    assert key == hashlib.sha256(data).hexdigest()
    assert store.get(key) == data and store.exists(key)
    assert store.path(key).parent.parent.parent == tmp_path.resolve()


def test_the_same_bytes_are_kept_once(tmp_path: Path) -> None:
    store = PixelStore(tmp_path)
    data = b"x" * 1000
    assert store.put(data) == store.put(data)
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == [store.path(store.put(data))]


def test_keys_cannot_name_paths_outside_the_store(tmp_path: Path) -> None:
    store = PixelStore(tmp_path / "px")
    (tmp_path / "secret").write_bytes(b"s")
    for key in ("../secret", "/etc/passwd", "A" * 64, "ab" * 31 + "/x", ""):
        with pytest.raises(PixelStoreError):
            store.get(key)


def test_corruption_on_disk_is_detected(tmp_path: Path) -> None:
    store = PixelStore(tmp_path)
    key = store.put(b"pixels")
    store.path(key).write_bytes(b"pixelz")
    with pytest.raises(PixelStoreError, match="corrupt"):
        store.get(key)


def test_missing_and_oversized_objects_are_clear_errors(tmp_path: Path) -> None:
    store = PixelStore(tmp_path, max_bytes=10)
    with pytest.raises(PixelStoreError, match="no object"):
        store.get("0" * 64)
    with pytest.raises(PixelStoreError, match="exceeds"):
        store.put(b"x" * 11)


def test_concurrent_writers_leave_one_whole_file_and_no_temporaries(tmp_path: Path) -> None:
    store = PixelStore(tmp_path)
    data = os.urandom(2 * 1024 * 1024)
    keys: list[str] = []
    threads = [threading.Thread(target=lambda: keys.append(store.put(data))) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(set(keys)) == 1 and store.get(keys[0]) == data
    assert [p.name for p in tmp_path.rglob(".incoming-*")] == []


def test_sweep_removes_only_stale_temporaries(tmp_path: Path) -> None:
    store = PixelStore(tmp_path)
    key = store.put(b"kept")
    folder = store.path(key).parent
    stale, fresh = folder / ".incoming-dead", folder / ".incoming-live"
    stale.write_bytes(b"half")
    fresh.write_bytes(b"half")
    old = time.time() - 7200
    os.utime(stale, (old, old))
    assert store.sweep(older_than_s=3600) == 1
    assert not stale.exists() and fresh.exists() and store.get(key) == b"kept"
