"""The base of every typed settings block (pipeline sections, training options, method options)."""

from __future__ import annotations

import types
import typing

from pydantic import BaseModel, ConfigDict, ValidationInfo, field_validator


def union_members(annotation) -> tuple:
    """The members of a union annotation (``bool | Literal["auto"]``), or the annotation alone."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return typing.get_args(annotation)
    return (annotation,)


def _plain(annotation):
    """``annotation`` without ``Annotated[...]`` metadata."""
    return typing.get_args(annotation)[0] if typing.get_origin(annotation) is typing.Annotated else annotation


def bool_for_number(value, annotation) -> bool:
    """Whether ``value`` holds true or false where ``annotation`` wants a number (pydantic would read it as 1 or
    0): at the top, or inside a list or tuple of numbers."""
    members = [_plain(m) for m in union_members(_plain(annotation))]
    if isinstance(value, bool):
        return bool not in members and any(m in (int, float) for m in members)
    if not isinstance(value, (list, tuple)):
        return False
    for m in members:
        origin, args = typing.get_origin(m), typing.get_args(m)
        if origin in (list, set) and args:
            return any(bool_for_number(v, args[0]) for v in value)
        if origin is tuple and args:
            each = [args[0]] * len(value) if len(args) == 2 and args[1] is Ellipsis else args
            return any(bool_for_number(v, a) for v, a in zip(value, each))
    return False


class Section(BaseModel):
    """Settings with defaults and help text; unknown keys are errors, assignments are validated, and no number may
    be NaN or infinite (every float setting also has a finite range of its own). A switch takes true or false (or
    the words its type lists, such as ``auto``): not 1, "yes", "t" or "off" in quotes, which pydantic would read as
    booleans while a YAML reader of the same file sees a number or a string; and a number is never true or false."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _true_or_false(cls, value, info: ValidationInfo):
        field = cls.model_fields.get(info.field_name or "")
        if field is not None and bool_for_number(value, field.annotation):
            raise ValueError("expected a number, not true or false")
        members = union_members(field.annotation) if field is not None else ()
        if bool not in members or isinstance(value, bool) or value is None:
            return value
        words = [w for m in members if typing.get_origin(m) is typing.Literal for w in typing.get_args(m)]
        if value in words:
            return value
        alternatives = "".join(f", or {w!r}" for w in words)
        raise ValueError(f"expected true or false{alternatives}")
