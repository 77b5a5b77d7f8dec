"""The batch's ledger: one small JSON record per case in ``OUTDIR/.cases/``, every file written atomically.

A case's record is written (temporary file, then ``os.replace``) only after
its heatmap and thumbnail are in place, so a record always describes files
that exist whole; a process killed at any moment leaves either the old record
or the new one, never a half-written file under a final name. Temporary files
are hidden (``.NAME.…partial…``) and removed by the next run
(:func:`remove_partials`), which holds the folder's lock (:func:`hold_lock`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from napari_vitcam.core.errors import InputError
from napari_vitcam.volumes.base import json_ready

CASES_FOLDER = ".cases"
HEATMAPS_FOLDER = "heatmaps"
THUMBNAILS_FOLDER = "thumbnails"
LOCK_FILE = ".batch.lock"
PARTIAL_MARK = ".partial"
CHUNK = 1 << 20


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write(path: Path, content: bytes) -> Path:
    """Write ``content`` to ``path`` through a hidden temporary file in the same folder and ``os.replace``."""
    path = Path(path)
    handle, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=PARTIAL_MARK, dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as stream:
            stream.write(content)
            stream.flush()
            os.fsync(stream.fileno())
        os.chmod(name, 0o666 & ~_umask())
        os.replace(name, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(name)
    return path


def file_digest(paths: Iterable[Path]) -> str:
    """SHA-256 of the content of ``paths`` (a DICOM folder: every file in it, by name), in order."""
    digest = hashlib.sha256()
    for path in paths:
        path = Path(path)
        files = sorted(p for p in path.iterdir() if p.is_file()) if path.is_dir() else [path]
        for item in files:
            digest.update(item.name.encode() + b"\0" if path.is_dir() else b"")
            with item.open("rb") as stream:
                while block := stream.read(CHUNK):
                    digest.update(block)
            digest.update(b"\0")
    return digest.hexdigest()


def prepare_outdir(outdir: Path) -> Path:
    """Create ``outdir`` and its sub-folders; a one-line :class:`InputError` when that is impossible."""
    outdir = Path(outdir).expanduser().resolve()
    if outdir.exists() and not outdir.is_dir():
        raise InputError(f"{outdir} is a file: give a folder for the batch's outputs")
    try:
        for sub in ("", CASES_FOLDER, HEATMAPS_FOLDER, THUMBNAILS_FOLDER):
            (outdir / sub).mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise InputError(f"cannot create {outdir} ({error.strerror}): choose a folder you may write to") from None
    if not os.access(outdir, os.W_OK):
        raise InputError(f"cannot write in {outdir}: choose a folder you may write to")
    return outdir


@contextlib.contextmanager
def hold_lock(outdir: Path) -> Iterator[None]:
    """Hold ``outdir``'s lock for a run: a second run on the same folder is refused while this one lives.

    The lock is an advisory ``flock`` on ``OUTDIR/.batch.lock``, released by the
    system when the process ends, even by ``kill -9`` (no stale lock). Where
    ``fcntl`` does not exist (Windows) there is no lock.
    """
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    with (Path(outdir) / LOCK_FILE).open("a") as stream:
        try:
            fcntl.flock(stream.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise InputError(
                f"another batch is writing to {outdir}: wait for it to finish or choose another output folder"
            ) from None
        try:
            yield
        finally:
            fcntl.flock(stream.fileno(), fcntl.LOCK_UN)


def remove_partials(outdir: Path) -> list[Path]:
    """Delete the temporary files an interrupted run left in the batch's own folders; return them."""
    removed = []
    for sub in ("", CASES_FOLDER, HEATMAPS_FOLDER, THUMBNAILS_FOLDER):
        folder = Path(outdir) / sub
        for path in folder.glob(f".*{PARTIAL_MARK}*") if folder.is_dir() else []:
            if path.is_file():
                path.unlink(missing_ok=True)
                removed.append(path)
    return removed


def record_path(outdir: Path, case_id: str) -> Path:
    return Path(outdir) / CASES_FOLDER / f"{case_id}.json"


def read_record(outdir: Path, case_id: str) -> dict[str, Any] | None:
    """The case's record, or None when there is none (or it cannot be read: the case is then redone)."""
    try:
        record = json.loads(record_path(outdir, case_id).read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def write_record(outdir: Path, record: dict[str, Any]) -> Path:
    """Write a case's record atomically."""
    content = json.dumps(json_ready(record), indent=1, sort_keys=True, allow_nan=False).encode()
    return atomic_write(record_path(outdir, str(record["case"])), content)


def is_finished(record: dict[str, Any] | None, outdir: Path, content_sha256: str, settings_sha256: str) -> bool:
    """Whether ``record`` is a success for this content and these settings, with its files in place."""
    if record is None or record.get("status") != "ok":
        return False
    if record.get("content_sha256") != content_sha256 or record.get("settings_sha256") != settings_sha256:
        return False
    files = [record.get("heatmap"), record.get("thumbnail")]
    return all(isinstance(f, str) and (Path(outdir) / f).is_file() for f in files)
