"""What a Label Studio JSON export may hold, declared once (pydantic) and checked before any value
is used: types (strict: a coordinate that is a string or null is refused, not converted), finite
numbers, ranges (percent coordinates, positive sizes), lengths (one label per region, polygons of
at least three points) and caps (a brush RLE, counts per image). A refusal is one line naming the
task, the result and the field."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from salis.annotation.kinds.base import MAX_COUNT
from salis.errors import InputError

MAX_SIDE = 100_000  # pixels of an image side
MAX_POINTS = 100_000  # vertices of one polygon
MAX_BRUSH_BYTES = 64 * 2**20  # a brush RLE's bytes (a 4096 x 4096 mask compresses far below this)

Finite = Annotated[float, Field(allow_inf_nan=False)]
# Label Studio gives coordinates in percent of the image; a hair of slack for rounding
Percent = Annotated[float, Field(allow_inf_nan=False, ge=-1.0, le=101.0)]
Extent = Annotated[float, Field(allow_inf_nan=False, gt=0.0, le=101.0)]
Side = Annotated[int, Field(gt=0, le=MAX_SIDE)]
OneLabel = Annotated[list[str], Field(min_length=1, max_length=1)]


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")


class PolygonValue(_Strict):
    points: Annotated[list[Annotated[list[Percent], Field(min_length=2, max_length=2)]],
                      Field(min_length=3, max_length=MAX_POINTS)]
    polygonlabels: OneLabel


class BrushValue(_Strict):
    rle: Annotated[list[Annotated[int, Field(ge=0, le=255)]], Field(min_length=1, max_length=MAX_BRUSH_BYTES)]
    brushlabels: OneLabel


class RectangleValue(_Strict):
    x: Percent
    y: Percent
    width: Extent
    height: Extent
    rotation: Finite = 0.0
    rectanglelabels: OneLabel


class KeypointValue(_Strict):
    x: Percent
    y: Percent
    keypointlabels: OneLabel


class ChoicesValue(_Strict):
    choices: Annotated[list[str], Field(max_length=10_000)]


class NumberValue(_Strict):
    number: Annotated[float, Field(allow_inf_nan=False, ge=0, le=MAX_COUNT)]


VALUES: dict[str, type[_Strict]] = {
    "polygonlabels": PolygonValue, "brushlabels": BrushValue, "rectanglelabels": RectangleValue,
    "keypointlabels": KeypointValue, "choices": ChoicesValue, "number": NumberValue,
}


class Result(_Strict):
    type: str
    value: dict[str, Any]
    from_name: str = ""
    original_width: Side | None = None
    original_height: Side | None = None


def _summary(err: ValidationError) -> str:
    first = err.errors()[0]
    where = ".".join(str(part) for part in first["loc"]) or "value"
    more = f" (and {err.error_count() - 1} more)" if err.error_count() > 1 else ""
    return f"{where}: {first['msg']}{more}"


def parse_result(raw: Any, item: str, path: Path) -> tuple[Result, _Strict | None]:
    """A result and its typed value (None for a region type salis does not read)."""
    try:
        result = Result.model_validate(raw)
        model = VALUES.get(result.type)
        return result, (model.model_validate(result.value) if model else None)
    except ValidationError as err:
        raise InputError(path, f"{item}: {_summary(err)}") from None
