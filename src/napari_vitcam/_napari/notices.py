"""Expected errors as napari notifications: one line of cause and remedy.

The engine's messages already say what is wrong and what to do; this module
only names the context (loading or running) and offers actions, such as
rerunning on the CPU after the GPU ran out of memory.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from napari.utils.notifications import Notification, NotificationSeverity, notification_manager

from napari_vitcam.core.errors import CheckpointError, DeviceOutOfMemoryError, VitcamError

Action = tuple[str, Callable[[], None]]
PREFIX = "Grad-CAM"


def load_message(error: VitcamError, path: str | Path) -> str:
    return f"{PREFIX}: cannot load {Path(path).name}: {error}"


def run_message(error: VitcamError) -> str:
    if isinstance(error, CheckpointError):
        return f"{PREFIX}: the checkpoint does not fit: {error}"
    return f"{PREFIX}: {error}"


def notify(message: str, *, severity: str = "error", actions: Sequence[Action] = ()) -> Notification:
    """Show ``message`` in napari's notification area; returns the notification."""
    notification = Notification(message, severity=NotificationSeverity(severity), actions=tuple(actions))
    notification_manager.dispatch(notification)
    return notification


def report_bug(error: Exception) -> None:
    """An unexpected error: napari's error notification, with the traceback."""
    notification_manager.receive_error(type(error), error, error.__traceback__)


def notify_load_error(error: VitcamError, path: str | Path) -> Notification:
    return notify(load_message(error, path))


def notify_run_error(error: VitcamError, *, rerun_on_cpu: Callable[[], None] | None = None) -> Notification:
    """A failed run; out of GPU memory comes with a "Rerun on CPU" action."""
    actions: list[Action] = []
    if isinstance(error, DeviceOutOfMemoryError) and rerun_on_cpu is not None:
        actions.append(("Rerun on CPU", rerun_on_cpu))
    return notify(run_message(error), actions=actions)
