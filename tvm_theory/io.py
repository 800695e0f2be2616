"""Files that are never half-written: atomic writes, SHA-256, and hashed checkpoint directories.

Every writer of the project goes through here, the toy trainer and the full-scale trainer alike:

* :func:`atomic_write_text` / :func:`atomic_write` write ``path.{pid}.tmp`` (fsync'ed; the process id keeps two
  writers of one file apart) and publish it with one ``os.replace``: a reader sees the old file or the new one,
  never a prefix.
* A checkpoint is a directory ``{root}/step_{NNNNNNNN}/`` of files plus ``meta.json``, which records the format, the
  step and the SHA-256 of every other file, and of its own content (``meta_sha256``). :func:`publish_checkpoint`
  fills ``step_N.tmp`` and renames it in one ``os.replace``; an interrupted write leaves the previous checkpoints
  intact (a stale ``step_*.tmp`` is ignored by :func:`list_checkpoints` and cleared by the next publish; snapshots,
  steps at a multiple of ``snapshot_every``, survive rotation). :func:`read_checkpoint_meta` verifies every hash
  and raises :class:`CheckpointError` naming the file on any mismatch.
* :class:`RunLock` makes one process the only writer of a run folder.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import socket
import sys
import time
from pathlib import Path
from typing import Callable, Mapping

PREFIX = "step_"
META = "meta.json"
LOCK = ".lock"


class CheckpointError(RuntimeError):
    """A checkpoint is missing, corrupted, or does not match the run that loads it."""


class RunFolderBusy(RuntimeError):
    """Another live process holds the run folder."""


class RunLock:
    """An exclusive lock on a run folder: ``{folder}/.lock``, held with ``flock`` for the life of the lock.

    The kernel releases a ``flock`` when its process dies, so a lock left by a killed run is never stale: the next
    run takes it and overwrites the holder's record. A second live writer gets :class:`RunFolderBusy` naming the
    holder (pid, host, start time, command) at once. (``flock`` is local to one machine on some network file
    systems; multi-node runs lock on rank 0 only.)
    """

    def __init__(self, folder: str | os.PathLike):
        self.path = Path(folder) / LOCK
        self.fh = None

    def acquire(self) -> "RunLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fh = open(self.path, "a+")
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            holder = fh.read().strip() or "unknown"
            fh.close()
            raise RunFolderBusy(f"{self.path.parent}: the run folder is in use by another process ({holder}); "
                                "wait for it to finish or choose another folder") from None
        fh.seek(0)
        fh.truncate()
        fh.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                             "since": time.strftime("%Y-%m-%dT%H:%M:%S"), "command": " ".join(sys.argv)}))
        fh.flush()
        self.fh = fh
        return self

    def release(self) -> None:
        if self.fh is not None:
            fcntl.flock(self.fh, fcntl.LOCK_UN)
            self.fh.close()
            self.fh = None

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def sha256_file(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def fsync_file(path: str | os.PathLike) -> None:
    """Flush a written file to disk (before it is renamed into place)."""
    with open(path, "rb") as fh:
        os.fsync(fh.fileno())


def atomic_write(path: str | os.PathLike, write: Callable[[Path], None]) -> Path:
    """Publish the file that ``write(tmp_path)`` creates at ``path`` in one rename; returns ``path``."""
    path = Path(path)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    write(tmp)
    fsync_file(tmp)
    os.replace(tmp, path)
    return path


def atomic_savez(path: str | os.PathLike, **arrays) -> Path:
    """``numpy.savez`` (uncompressed) to exactly ``path`` (no ``.npz`` appended), atomically."""
    import numpy as np

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as fh:
            np.savez(fh, **arrays)

    return atomic_write(path, write)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` atomically."""
    return atomic_write(path, lambda tmp: tmp.write_text(text))


# ---- hashed checkpoint directories ---------------------------------------------------------------------------------

def checkpoint_name(step: int) -> str:
    return f"{PREFIX}{step:08d}"


def list_checkpoints(root: str | os.PathLike) -> list[Path]:
    """Published checkpoint directories under ``root``, oldest first (``*.tmp`` directories are not checkpoints)."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and p.name.startswith(PREFIX) and p.name[len(PREFIX):].isdigit()]
    return sorted(found, key=lambda p: int(p.name[len(PREFIX):]))


def latest_checkpoint(root: str | os.PathLike) -> Path | None:
    found = list_checkpoints(root)
    return found[-1] if found else None


def start_checkpoint(root: str | os.PathLike, step: int) -> Path:
    """Create the empty ``step_N.tmp`` directory that :func:`publish_checkpoint` will fill. Unfinished checkpoint
    directories (``step_*.tmp``, left by an interrupted save) are removed; nothing else is. The caller holds the run
    folder's :class:`RunLock`, so no other writer's directory can be among them."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    for stale in root.glob(f"{PREFIX}*.tmp"):
        if stale.is_dir():
            shutil.rmtree(stale)
    tmp = root / f"{checkpoint_name(step)}.tmp"
    tmp.mkdir()
    return tmp


def publish_checkpoint(tmp: Path, *, fmt: str, step: int, meta: Mapping, keep: int | None,
                       snapshot_every: int = 0) -> Path:
    """Hash every file of the filled ``tmp`` directory, write ``meta.json`` (``meta`` + format, step, hashes),
    rename it to ``step_N`` and delete all but the newest ``keep`` checkpoints (``None`` keeps all); checkpoints at a
    multiple of ``snapshot_every`` (> 0) are snapshots, never deleted and not counted in ``keep``."""
    if keep is not None and keep < 1:
        raise ValueError(f"keep: expected at least 1 checkpoint to keep, got {keep}")
    files = sorted(p.name for p in tmp.iterdir())
    for name in files:
        fsync_file(tmp / name)
    record = {**meta, "format": fmt, "step": step, "files": {name: sha256_file(tmp / name) for name in files}}
    record["meta_sha256"] = _meta_digest(record)
    (tmp / META).write_text(json.dumps(record, indent=1))
    fsync_file(tmp / META)
    final = tmp.with_name(checkpoint_name(step))
    if final.exists():  # re-saving the same step (e.g. a signal right after a periodic save)
        shutil.rmtree(final)
    os.replace(tmp, final)
    if keep is not None:
        rolling = [p for p in list_checkpoints(final.parent)
                   if not (snapshot_every > 0 and int(p.name[len(PREFIX):]) % snapshot_every == 0)]
        for old in rolling[:-keep]:
            shutil.rmtree(old)
    return final


def write_checkpoint(root: str | os.PathLike, step: int, files: Mapping[str, Callable[[Path], None]], *,
                     fmt: str, meta: Mapping, keep: int | None = None) -> Path:
    """One-process checkpoint: ``files`` maps a file name to a function that writes that file at the path given."""
    tmp = start_checkpoint(root, step)
    for name, write in files.items():
        write(tmp / name)
    return publish_checkpoint(tmp, fmt=fmt, step=step, meta=meta, keep=keep)


def _meta_digest(record: Mapping) -> str:
    """SHA-256 of a meta record's canonical JSON, its own ``meta_sha256`` left out."""
    body = {k: v for k, v in record.items() if k != "meta_sha256"}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def read_checkpoint_meta(path: str | os.PathLike, fmt: str) -> dict:
    """``meta.json`` of a checkpoint after checking its format and every file's SHA-256."""
    path = Path(path)
    meta_path = path / META
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, ValueError) as err:
        raise CheckpointError(f"{meta_path}: unreadable checkpoint meta data ({err})") from err
    if meta.get("format") != fmt:
        raise CheckpointError(f"{meta_path}: expected format {fmt!r}, got {meta.get('format')!r}")
    if meta.get("meta_sha256") != _meta_digest(meta):
        raise CheckpointError(f"{meta_path}: SHA-256 mismatch, the meta data was changed or corrupted")
    for name, digest in meta["files"].items():
        file = path / name
        if not file.is_file():
            raise CheckpointError(f"{file}: missing from the checkpoint")
        if sha256_file(file) != digest:
            raise CheckpointError(f"{file}: SHA-256 mismatch, the file is corrupted")
    return meta
