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
import multiprocessing
import os
import time
import traceback
from pathlib import Path
from typing import Any, Callable, Dict, List, Sequence

__all__ = ["load_records", "append_record", "claim", "release", "work", "run_pending", "unrecorded"]


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


def work(records_path: Path, pending: Callable[[Dict[str, dict]], List[Any]], run: Callable[..., dict],
         describe: Callable[[Any, dict], str], threads: int = 1, max_runs: int = 0, deadline: float = float("inf"),
         worker: int = 0, extra: Sequence[Any] = ()) -> int:
    """Run pending configurations until none is left (or the limits); returns how many ran.

    ``pending(records)`` lists the configurations still to run in priority order (each with a
    ``key()``), ``run(cfg, threads, *extra)`` returns a record, ``describe(cfg, record)`` a line of log.
    Each run is claimed first, so several workers can share ``records_path``.
    """
    done = 0
    while (max_runs <= 0 or done < max_runs) and time.time() < deadline:
        todo = pending(load_records(records_path))
        cfg = next((c for c in todo if claim(records_path, c.key())), None)
        if cfg is None:
            break
        try:
            t0 = time.time()
            rec = run(cfg, threads, *extra)
            append_record(records_path, rec)
            done += 1
            print(f"[worker {worker}, pid {os.getpid()}] {len(todo) - 1} left | {describe(cfg, rec)} "
                  f"({time.time() - t0:.0f} s)", flush=True)
        finally:
            release(records_path, cfg.key())
    return done


def _work_args(args):
    try:
        return work(*args)
    except Exception:
        traceback.print_exc()
        raise


def run_pending(records_path: Path, pending, run, describe, *, workers: int = 1, threads: int = 1,
                max_runs: int = 0, hours: float = 0.0, extra: Sequence[Any] = ()) -> int:
    """:func:`work` in ``workers`` processes (spawned; the callables must be importable); returns the runs made."""
    deadline = time.time() + hours * 3600 if hours > 0 else float("inf")
    jobs = [(Path(records_path), pending, run, describe, threads, max_runs, deadline, w, tuple(extra))
            for w in range(workers)]
    if workers == 1:
        return work(*jobs[0])
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(workers) as pool:
        return sum(pool.map(_work_args, jobs))


def unrecorded(configs, records) -> list:
    """``configs`` without the runs already in ``records`` (keyed by ``cfg.key()``) and without repeats, in order."""
    seen, todo = set(), []
    for cfg in configs:
        k = cfg.key()
        if k not in seen and k not in records:
            seen.add(k)
            todo.append(cfg)
    return todo
