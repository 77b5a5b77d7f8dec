"""Recently loaded checkpoint paths, remembered across napari sessions.

Kept as a small JSON list in the user's config folder
(``platformdirs.user_config_dir("napari-vitcam")``), or in the folder named by
the ``NAPARI_VITCAM_CONFIG_DIR`` environment variable. A missing or damaged
file reads as an empty list; failing to write is not an error.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

CONFIG_DIR_VARIABLE = "NAPARI_VITCAM_CONFIG_DIR"
FILE_NAME = "recent_checkpoints.json"
DEFAULT_LIMIT = 10


def config_dir() -> Path:
    override = os.environ.get(CONFIG_DIR_VARIABLE)
    if override:
        return Path(override)
    from platformdirs import user_config_dir

    return Path(user_config_dir("napari-vitcam", appauthor=False))


@dataclass(frozen=True)
class RecentPaths:
    """Most recent first, without duplicates, at most ``limit`` entries."""

    file: Path
    limit: int = DEFAULT_LIMIT

    @classmethod
    def default(cls) -> RecentPaths:
        return cls(config_dir() / FILE_NAME)

    def load(self) -> list[str]:
        try:
            entries = json.loads(self.file.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return []
        if not isinstance(entries, list):
            return []
        return [entry for entry in entries if isinstance(entry, str)][: self.limit]

    def add(self, path: str | os.PathLike) -> list[str]:
        """Put ``path`` first and save; returns the new list."""
        entry = str(Path(path).expanduser().resolve())
        entries = [entry] + [e for e in self.load() if e != entry]
        entries = entries[: self.limit]
        try:
            self.file.parent.mkdir(parents=True, exist_ok=True)
            temporary = self.file.with_suffix(".tmp")
            temporary.write_text(json.dumps(entries, indent=1), encoding="utf-8")
            temporary.replace(self.file)
        except OSError:
            pass  # remembering is a convenience; the load itself succeeded
        return entries
