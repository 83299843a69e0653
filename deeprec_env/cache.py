"""Content-addressed artifact cache: `artifacts/<dataset>/<config-hash>/<what>/`.

A cache entry is built in a temporary directory and renamed into place only when complete, with a manifest of
file checksums; an entry whose files no longer match the manifest is reported and rebuilt.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger(__name__)
MANIFEST = "MANIFEST.json"


def config_hash(config: object) -> str:
    """Short stable hash of a JSON-serialisable config."""
    blob = json.dumps(config, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:12]


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _files(directory: Path) -> list[Path]:
    return sorted(p for p in directory.rglob("*") if p.is_file() and p.name != MANIFEST)


def is_complete(directory: Path) -> bool:
    """True when the entry exists and every file matches its manifest checksum."""
    manifest_path = directory / MANIFEST
    if not manifest_path.is_file():
        return False
    try:
        manifest = json.loads(manifest_path.read_text())
    except json.JSONDecodeError:
        return False
    present = {str(p.relative_to(directory)) for p in _files(directory)}
    if present != set(manifest):
        return False
    return all(sha256_file(directory / name) == digest for name, digest in manifest.items())


def cached(directory: Path, build: Callable[[Path], None], what: str) -> Path:
    """Return `directory`, building it with `build(tmp_dir)` unless a complete, uncorrupted entry exists."""
    if directory.exists():
        if is_complete(directory):
            log.info("reusing cached %s at %s", what, directory)
            return directory
        log.warning("cached %s at %s is incomplete or corrupt; rebuilding it", what, directory)
        shutil.rmtree(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = directory.with_name(f".{directory.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        build(tmp)
        manifest = {str(p.relative_to(tmp)): sha256_file(p) for p in _files(tmp)}
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1))
        try:
            os.replace(tmp, directory)
        except OSError:  # another process built the same entry meanwhile: builds are deterministic, keep theirs
            if not is_complete(directory):
                raise
            log.info("reusing cached %s at %s (built concurrently by another process)", what, directory)
            return directory
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log.info("built %s at %s", what, directory)
    return directory
