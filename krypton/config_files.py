"""Configuration files as pydantic models, and their faults in words that say where.

Krypton reads three files that people write or edit: the deployment registry
(TOML), tuned dataset configs (JSON) and the API keys file (JSON). Each is
read into a :class:`FileModel`, which is strict about types (``seed = 1.7`` is
no seed, ``true`` no size) and refuses unknown fields: a misspelt
``chekpoint`` would otherwise deploy random weights without a word.

Pydantic's own error text names a path such as ``models.2.seed``; an operator
fixing a file thinks in entries, ``model 'retina-resnet18'``. :meth:`FileModel.read`
says the file, the entry (by its ``name``) and the field. This module imports
nothing of Krypton: models, the service and the command line share it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, ClassVar, Self, get_args

from pydantic import BaseModel, ConfigDict, Strict, ValidationError
from pydantic_core import ErrorDetails

__all__ = ["ARRAY", "FileModel", "describe", "listed_once"]

ARRAY = Strict(False)
"""On a tuple field: a TOML or JSON array (a list) is accepted; its items stay strict."""

_TAG = "<"
"""How a union member's tag starts (``Tag("<table>")``): pydantic puts the tag in an
error's location, and a person reading the file never wrote it, so it is left out."""


class FileModel(BaseModel):
    """A file, or an entry of one: frozen, strictly typed, no unknown fields."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    entries: ClassVar[Mapping[str, str]] = {}
    secret: ClassVar[frozenset[str]] = frozenset()
    """Fields whose values a message never shows (a key's hash: messages reach logs)."""
    """Fields that list entries, and what one is called: ``{"models": "model"}``
    reads an error in ``models[2]`` as ``model 'retina-resnet18'``."""

    @classmethod
    def read(cls, document: object, where: str, refuse: type[Exception]) -> Self:
        """``document`` validated; else ``refuse`` with every fault, after ``where``.

        Raises:
            refuse: naming, for each fault, the entry and the field.
        """
        try:
            return cls.model_validate(document)
        except ValidationError as exc:
            raise refuse(describe(exc, where, cls, document)) from None


def listed_once(kind: str, names: Iterable[str]) -> None:
    """For a file's validator: entries are looked up by name, so a second entry of one
    name would be shadowed without a word.

    Raises:
        ValueError: ``model 'm' listed twice``, which pydantic reports as the file's fault.
    """
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise ValueError(f"{kind} {name!r} listed twice")
        seen.add(name)


def describe(error: ValidationError, where: str, schema: type[FileModel],
             document: object) -> str:
    """``where: fault; fault``, where each fault names its entry and field.

    Args:
        error: What validating ``document`` against ``schema`` raised.
        where: The file, e.g. ``registry deploy/registry.toml``; ``""``: none said.
        schema: The model ``document`` was validated against.
        document: What was validated, to name entries by their ``name``.
    """
    details = error.errors(include_url=False)
    faults = [_fault(detail, schema, document) for detail in details
              if not _echo(detail, details)]
    return f"{where}: {'; '.join(faults)}" if where else "; ".join(faults)


def _echo(detail: ErrorDetails, details: Sequence[ErrorDetails]) -> bool:
    """A length fault of an array whose items failed: pydantic counts only the items that
    passed, so ``labels = [1]`` would also read as too short."""
    where = detail["loc"]
    return detail["type"] == "too_short" and any(
        other["loc"][:len(where)] == where and len(other["loc"]) > len(where)
        and isinstance(other["loc"][len(where)], int) for other in details)


def _fault(detail: ErrorDetails, schema: type[FileModel], document: object) -> str:
    location = detail["loc"]
    entry, path = _entry(location, schema, document)
    field = ".".join(str(part) for part in path if not _is_tag(part))
    if detail["type"] == "extra_forbidden":
        allowed = _fields_at(schema, location[:-1])
        what = f"unknown field {field!r}" + (f" (allowed: {', '.join(allowed)})"
                                             if allowed else "")
    elif detail["type"] == "missing":
        what = f"missing field {field!r}"
    else:
        shown = not (path and str(path[-1]) in schema.secret)
        reason = _reason(detail, shown=shown)
        what = f"{field}: {reason}" if field else reason
    return f"{entry}: {what}" if entry else what


def _entry(location: Sequence[int | str], schema: type[FileModel], document: object
           ) -> tuple[str, Sequence[int | str]]:
    """The entry a location falls in (``model 'm'``, or ``model #2`` without a name), and
    the rest of the location; ``""`` for a field of the file itself."""
    if len(location) < 2 or location[0] not in schema.entries:
        return "", location
    listed, index = location[0], location[1]
    if not isinstance(index, int):
        return "", location
    items = document.get(listed) if isinstance(document, dict) else None
    item = items[index] if isinstance(items, list) and index < len(items) else None
    name = item.get("name") if isinstance(item, dict) else None
    label = repr(name) if isinstance(name, str) else f"#{index + 1}"
    return f"{schema.entries[str(listed)]} {label}", location[2:]


_IN_FILE_WORDS = {
    "model_type": "should be a table of fields",
    "dict_type": "should be a table of fields",
    "tuple_type": "should be an array",
    "list_type": "should be an array",
    "too_short": "should have at least {min_length} item(s)",
    "too_long": "should have at most {max_length} item(s)",
}
"""Pydantic's words where they name Python types (``tuple``, ``_ModelEntry``) that a
person editing the file never sees."""


def _reason(detail: ErrorDetails, *, shown: bool = True) -> str:
    """What is wrong with the value: a validator's own words, else pydantic's and the value
    (unless not ``shown``)."""
    context = detail.get("ctx", {})
    if detail["type"] == "value_error":
        return str(context.get("error", detail["msg"]))
    words = _IN_FILE_WORDS.get(detail["type"])
    if words is not None:
        message = words.format(**context)
    else:  # "Input should be...", "String should match...": the value is named after
        rest = detail["msg"].partition(" ")[2]
        message = rest if rest.startswith("should") else detail["msg"]
    if not shown:
        return message
    value = repr(detail["input"])
    return f"{message}, got {value if len(value) <= 60 else value[:57] + '...'}"


def _fields_at(schema: type[BaseModel], location: Sequence[int | str]) -> list[str]:
    """The fields allowed at ``location``: the model found by following its field names."""
    model: type[BaseModel] | None = schema
    for part in location:
        if model is None or not isinstance(part, str) or _is_tag(part):
            continue
        field = model.model_fields.get(part)
        model = None if field is None else _model_in(field.annotation)
    return sorted(model.model_fields) if model is not None else []


def _model_in(annotation: Any) -> type[BaseModel] | None:
    """The model a field holds, through ``tuple[...]``, ``| None``, unions and ``Annotated``."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for argument in get_args(annotation):
        found = _model_in(argument)
        if found is not None:
            return found
    return None


def _is_tag(part: int | str) -> bool:
    return isinstance(part, str) and part.startswith(_TAG)
