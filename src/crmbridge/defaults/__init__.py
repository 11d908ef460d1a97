"""Package data: the default regulation and the sandbox's mapping files, for installs without the repository's mappings/.

`regulation.yaml` is what `discover` starts a fresh install from; the bindings, plans and KPI files fit the built-in
sandboxes, so `crmbridge demo` runs from any folder. They are copies of the repository's mappings/ (a test keeps
them equal).
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from importlib.resources import files
from pathlib import Path

#: every mapping file of the repository's mappings/ (the demo reads the plans and KPI files too)
FILES = ("regulation.yaml", "bitrix24.yaml", "amocrm.yaml", "plans.yaml", "plans.amocrm.yaml", "kpi.yaml",
         "motivation.yaml")


def text(name: str) -> str:
    return files(__name__).joinpath(name).read_text(encoding="utf-8")


@contextmanager
def directory() -> Iterator[Path]:
    """A folder holding the packaged mapping files (the package's own, or a temporary copy when it is zipped)."""
    root = files(__name__)
    if isinstance(root, Path):
        yield root
        return
    with tempfile.TemporaryDirectory(prefix="crmbridge-defaults-") as folder:  # pragma: no cover - zipped installs
        for name in FILES:
            with root.joinpath(name).open("rb") as source, open(Path(folder) / name, "wb") as target:
                shutil.copyfileobj(source, target)
        yield Path(folder)
