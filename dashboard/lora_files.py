"""A picked experiment's LoRA folder (outputs/lora: the diffusers file, the kohya file, the model
card and its sample images, the params) as one zip file for the browser to save, read at the
experiment's commit through DVC's own file system (git for the files git keeps, DVC's cache for
the outputs), or from the workspace. No widgets here."""

from __future__ import annotations

import io
import zipfile
from collections.abc import Callable
from pathlib import Path, PurePosixPath

from dashboard.dvc_cli import DvcError
from stages.common import paths

MAX_BYTES = 2 * 1024**3  # a LoRA folder larger than this is fetched with `dvc get`, not the page
ZIP_TIME = (1980, 1, 1, 0, 0, 0)  # the same files give the same zip
PULL = "`dvc exp pull <remote> <name>` (or `dvc pull`) fetches them from your DVC remote"


def lora_zip(
    repo: Path,
    rev: str | None,
    name: str,
    outside: Callable[[str], str | None] = lambda path: None,
) -> bytes:
    """The zip of outputs/lora at commit `rev` (None: the workspace), its files in the folder
    zip_name(name) without .zip, for the row named `name`. `outside(path)` says why a workspace
    file must not be read (a link that leaves the repository), or None. DvcError says what is
    missing and how to get it."""
    from dvc.api import DVCFileSystem  # dvc's API costs a second to import: only on a click

    where = f"{name} ({rev[:7]})" if rev else "the workspace"
    folder = paths.LORA.as_posix()
    try:
        fs = DVCFileSystem(str(repo), rev=rev)
        # from the repository's root: a relative path is taken from the working directory when
        # that is inside the repository (Voila runs the kernel in the dashboard's folder)
        files = sorted(fs.find(f"/{folder}", detail=False))
    except Exception as error:  # dvc raises many kinds; each is said, none is hidden
        raise DvcError(
            f"cannot list {folder} of {where}: {error}. Its outputs may not be in this "
            f"machine's DVC cache: {PULL}"
        ) from error
    if not files:
        raise DvcError(
            f"{where} has no LoRA files in {folder}: its train_lora did not run, or DVC "
            "does not know its outputs"
        )
    buffer, total, top = io.BytesIO(), 0, zip_name(name).removesuffix(".zip")
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for file in files:
            relative = PurePosixPath(file.lstrip("/")).relative_to(folder)
            if rev is None and (why := outside(f"{folder}/{relative}")):
                raise DvcError(f"{folder}/{relative} of the workspace is not read: {why}")
            try:
                data = fs.cat_file(file)
            except FileNotFoundError:
                raise DvcError(
                    f"{folder}/{relative} of {where} is not in this machine's DVC cache: {PULL}"
                ) from None
            total += len(data)
            if total > MAX_BYTES:
                raise DvcError(
                    f"the LoRA files of {where} pass {MAX_BYTES // 1024**3} GB: fetch them with "
                    f"`dvc get . {folder} --rev {rev or 'HEAD'}` instead"
                )
            info = zipfile.ZipInfo(f"{top}/{relative}", date_time=ZIP_TIME)
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, data)
    return buffer.getvalue()


def zip_name(name: str) -> str:
    """A file name for the browser: the experiment's name with anything odd made '-'."""
    safe = "".join(c if c.isalnum() or c in "._-" else "-" for c in name).strip(".-") or "lora"
    return f"pokemon-lora-{safe}.zip"
