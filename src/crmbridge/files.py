"""Files crmbridge writes for an admin (drafts, schemas): atomic, owner-only where they hold personal data,
and every failure named by the file and its real cause."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from crmbridge.errors import CrmBridgeError


def write_text(path: Path, text: str, *, private: bool = False, option: str | None = None) -> None:
    """Write `text` to `path` whole or not at all (a crash never leaves half a file).

    `private` files (drafts naming the portal's users) are created 0600; others follow the umask. `option`
    names the command-line option that chose the path, for the hint of an error.
    """
    hint = f"choose another {option}" if option else "check the path and the folder's permissions"
    if path.is_dir():
        raise CrmBridgeError(f"cannot write {path}: it is a folder", hint=hint)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        descriptor, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    except OSError as exc:
        raise CrmBridgeError(f"cannot write {path}: {_why(exc)} (folder {path.parent})", hint=hint) from None
    try:
        with os.fdopen(descriptor, "w", encoding="utf-8") as file:
            file.write(text)
        if not private:
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(temporary, 0o666 & ~umask)  # mkstemp creates 0600; a shared file follows the umask
        os.replace(temporary, path)
    except OSError as exc:
        Path(temporary).unlink(missing_ok=True)
        raise CrmBridgeError(f"cannot write {path}: {_why(exc)}", hint=hint) from None


def make_folder(path: Path, *, option: str | None = None) -> None:
    """Create a folder for output, or say in one line why it cannot be."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        what = "a file is in the way" if isinstance(exc, (FileExistsError, NotADirectoryError)) else _why(exc)
        hint = f"choose another {option}" if option else "check the path and the folder's permissions"
        raise CrmBridgeError(f"cannot create the folder {path}: {what}", hint=hint) from None


def _why(exc: OSError) -> str:
    return (exc.strerror or type(exc).__name__).lower()
