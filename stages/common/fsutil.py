"""Write outputs so that a killed stage never leaves a half-written file for DVC to cache."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def _tmp_prefix(target: Path) -> str:
    return f".{target.name}.tmp-"


def _clear_stale(target: Path) -> None:
    """Remove temporaries that an earlier, killed run left beside `target`."""
    for stale in target.parent.glob(_tmp_prefix(target) + "*"):
        _remove(stale)


@contextmanager
def atomic_dir(target: Path) -> Iterator[Path]:
    """Yield an empty temporary folder; on success it replaces `target` in one rename."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    _clear_stale(target)
    tmp = Path(tempfile.mkdtemp(prefix=_tmp_prefix(target), dir=target.parent))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    tmp.chmod(0o755)
    _remove(target)
    tmp.rename(target)


def atomic_write_bytes(target: Path, data: bytes) -> None:
    """Write `data` to a temporary file beside `target`, then rename it into place."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=_tmp_prefix(target), dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.chmod(name, 0o644)
        os.replace(name, target)
    except BaseException:
        Path(name).unlink(missing_ok=True)
        raise


def atomic_write_text(target: Path, text: str) -> None:
    atomic_write_bytes(target, text.encode("utf-8"))


def atomic_write_json(target: Path, value: Any) -> None:
    atomic_write_text(target, json.dumps(value, indent=2, ensure_ascii=False) + "\n")


def stable_safetensors(raw: bytes) -> bytes:
    """A safetensors file's bytes with its JSON header in a fixed order (the metadata first,
    its keys sorted, then the tensors by name). safetensors keeps the header in a hash map
    whose order changes with each process, so two runs that save the same tensors and the same
    metadata of more than one key write different bytes, and DVC sees a new output. Offsets
    are absolute, so the data is untouched; the header keeps its length (and padding)."""
    size = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8 : 8 + size])
    ordered = {}
    if "__metadata__" in header:
        ordered["__metadata__"] = dict(sorted(header.pop("__metadata__").items()))
    ordered |= {name: header[name] for name in sorted(header)}
    text = json.dumps(ordered, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    if len(text) > size:
        raise ValueError(f"safetensors header: {len(text)} bytes once ordered, {size} before")
    return raw[:8] + text.ljust(size) + raw[8 + size :]
