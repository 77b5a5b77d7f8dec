"""Words every layer shares: shapes, stage names, upsampling modes, class labels, message text.

Defined once here so that the engine, the pipeline and the front ends match
them by value, never by copies of the same string.
"""

from __future__ import annotations

from typing import Literal, get_args

Triple = tuple[int, int, int]
"""Three integers along the (depth, height, width) axes."""

FloatTriple = tuple[float, float, float]
"""Three floats along the (depth, height, width) axes."""

Stage = Literal["load", "preprocess", "forward", "backward", "map", "upsample", "check"]
"""A step of loading a model or explaining a volume, in the order they run."""
STAGES: tuple[Stage, ...] = get_args(Stage)

Upsample = Literal["smooth", "patch"]
"""How a token map becomes a voxel map (see :mod:`napari_vitcam.engine.voxel_map`)."""
UPSAMPLE_MODES: tuple[Upsample, ...] = get_args(Upsample)

MESSAGE_DETAIL = 160
"""How many characters of a third-party error message a one-line message quotes."""


def class_label(index: int) -> str:
    """The name a class gets when the checkpoint names none: ``"class 3"``."""
    return f"class {index}"


def class_labels(count: int) -> tuple[str, ...]:
    """``("class 0", ..., "class count-1")``."""
    return tuple(class_label(i) for i in range(count))


def name_of_class(names: tuple[str, ...], index: int) -> str:
    """``names[index]``, or the fallback label where the names do not reach ``index``."""
    return names[index] if 0 <= index < len(names) else class_label(index)


def one_line(text: object, limit: int = MESSAGE_DETAIL) -> str:
    """``text`` on one line (white space folded), at most ``limit`` characters."""
    return " ".join(str(text).split())[:limit]


def error_detail(error: BaseException, limit: int = MESSAGE_DETAIL) -> str:
    """``"TypeError: what it said"``, on one line, for quoting a foreign error in our message."""
    return f"{type(error).__name__}: {one_line(error, limit)}"
