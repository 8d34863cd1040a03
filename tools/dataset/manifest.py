"""What a dataset folder holds: atomic writes, checksums, and the manifest that makes a run resumable.

``DIR/manifest.json`` lists every file written and verified, with its SHA-256
checksum, size, and the *fingerprint* of what it was made from (the image's
nanobragg tokens, the format, the detector effects and their seed).  A rerun
skips an image whose file is listed with the fingerprint it would have now
and still has the listed checksum; anything else is rendered again.  Every
file, the manifest included, is written under a temporary name in the same
folder, flushed to disk, then renamed into place, so a run killed at any
moment leaves complete files or none.
"""

from __future__ import annotations

import hashlib
import json
import os
import time

MANIFEST = "manifest.json"
TRUTH = "truth.json"
VERSION = 1
PART = ".part-"               # temporary files: NAME.part-PID


def sha256_file(path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while True:
            block = handle.read(chunk)
            if not block:
                return digest.hexdigest()
            digest.update(block)


def atomic_write(path, payload: bytes) -> None:
    """Write ``payload`` to ``path`` under a temporary name, flush it to disk, rename it into place."""
    temporary = f"{path}{PART}{os.getpid()}"
    try:
        with open(temporary, "wb") as handle:
            handle.write(payload)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        try:
            os.remove(temporary)
        except OSError:
            pass
        raise


def write_json(path, value) -> None:
    atomic_write(path, (json.dumps(value, indent=1) + "\n").encode("utf-8"))


def fingerprint(value) -> str:
    """SHA-256 of a JSON-able value (keys sorted): what an output was made from."""
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode("utf-8")).hexdigest()


def remove_leftovers(folder) -> list:
    """Remove temporary files a killed run left in ``folder`` (and its frames/ and spectra/ folders)."""
    removed = []
    for sub in ("", "frames", "spectra"):
        where = os.path.join(folder, sub)
        if not os.path.isdir(where):
            continue
        for name in os.listdir(where):
            if PART in name:
                path = os.path.join(where, name)
                try:
                    os.remove(path)
                    removed.append(path)
                except OSError:
                    pass
    return removed


class Manifest:
    """The verified files of a dataset folder.

    Saved after every file while it lists fewer than ``LARGE`` files; a larger
    one at most every ``interval`` seconds (rewriting it costs time in
    proportion to its length), so a killed run loses the record of at most
    that much work, never a file.
    """

    LARGE = 1000

    def __init__(self, folder, interval: float = 0.5):
        self.folder = folder
        self.path = os.path.join(folder, MANIFEST)
        self.interval = interval
        self.files = {}              # name -> {"fingerprint", "sha256", "bytes"}
        self.masters = {}            # NeXus master name -> {"fingerprint", "sha256", "bytes", "frames"}
        self._saved = 0.0
        self._dirty = False

    @classmethod
    def load(cls, folder) -> "Manifest":
        manifest = cls(folder)
        try:
            with open(manifest.path, encoding="utf-8") as handle:
                data = json.load(handle)
        except (OSError, ValueError):
            return manifest          # none yet, or unreadable: everything is verified afresh
        if isinstance(data, dict) and data.get("version") == VERSION:
            manifest.files = dict(data.get("files", {}))
            manifest.masters = dict(data.get("masters", {}))
        return manifest

    def _verified(self, entry, path) -> bool:
        try:
            if os.path.getsize(path) != entry.get("bytes"):
                return False
            return sha256_file(path) == entry.get("sha256")
        except OSError:
            return False

    def done(self, name: str, print_: str) -> bool:
        """Whether ``name`` is on disk, listed with fingerprint ``print_`` and the listed checksum."""
        entry = self.files.get(name)
        return (entry is not None and entry.get("fingerprint") == print_
                and self._verified(entry, os.path.join(self.folder, name)))

    def master_done(self, name: str, print_: str) -> bool:
        entry = self.masters.get(name)
        return (entry is not None and entry.get("fingerprint") == print_
                and self._verified(entry, os.path.join(self.folder, name)))

    def record(self, name: str, print_: str, sha256: str, size: int) -> None:
        self.files[name] = {"fingerprint": print_, "sha256": sha256, "bytes": size}
        self._dirty = True
        if len(self.files) < self.LARGE or time.monotonic() - self._saved >= self.interval:
            self.save()

    def record_master(self, name: str, print_: str, frames: list) -> None:
        path = os.path.join(self.folder, name)
        self.masters[name] = {"fingerprint": print_, "sha256": sha256_file(path),
                              "bytes": os.path.getsize(path), "frames": list(frames)}
        self._dirty = True
        self.save()

    def forget(self, name: str) -> None:
        if self.files.pop(name, None) is not None:
            self._dirty = True

    def save(self) -> None:
        if not self._dirty and os.path.exists(self.path):
            return
        write_json(self.path, {"version": VERSION, "files": self.files, "masters": self.masters})
        self._saved = time.monotonic()
        self._dirty = False
