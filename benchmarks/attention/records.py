"""The store of finished runs: one JSON object per line, appended as each run ends.

The file is committed as the study goes, so a later session (on a fresh machine) resumes from it:
a run whose key is already in the file is never repeated. Several worker processes can share one
file: each claims a run by creating ``<file>.claims/<hash>`` exclusively before starting it; a claim
whose process is gone is ignored.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
from pathlib import Path
from typing import Dict

__all__ = ["load_records", "append_record", "claim", "release"]


def load_records(path: Path) -> Dict[str, dict]:
    """``{key: record}`` from the JSON-lines file (empty if it does not exist)."""
    out: Dict[str, dict] = {}
    if not Path(path).is_file():
        return out
    with open(path, encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}:{n}: expected one JSON record per line ({exc})") from None
            out[rec["key"]] = rec
    return out


def append_record(path: Path, record: dict) -> None:
    """Append one record as one line, under an exclusive lock."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    line = json.dumps(record, sort_keys=True, allow_nan=False) + "\n"
    with open(path, "a", encoding="utf-8") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            fh.write(line)
            fh.flush()
            os.fsync(fh.fileno())
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _claim_path(path: Path, key: str) -> Path:
    return Path(str(path) + ".claims") / hashlib.sha1(key.encode()).hexdigest()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def claim(path: Path, key: str) -> bool:
    """Claim run ``key`` for this process; False if a live process holds it."""
    cp = _claim_path(path, key)
    cp.parent.mkdir(parents=True, exist_ok=True)
    for _ in range(2):
        try:
            fd = os.open(cp, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            try:
                pid = int(cp.read_text() or 0)
            except (OSError, ValueError):
                pid = 0
            if pid and _alive(pid):
                return False
            cp.unlink(missing_ok=True)  # stale: its process is gone
            continue
        with os.fdopen(fd, "w") as fh:
            fh.write(str(os.getpid()))
        return True
    return False


def release(path: Path, key: str) -> None:
    _claim_path(path, key).unlink(missing_ok=True)
