"""Render `docs/configuration.md`, the reference of every `SDQUEUE_*` variable, from the `Settings` model."""

from __future__ import annotations

import json
import types
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin
from urllib.parse import urlsplit, urlunsplit

from pydantic import BaseModel, SecretStr
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from sdqueue.config.settings import ENV_PREFIX, Settings

CONFIGURATION_DOC_PATH = "docs/configuration.md"
NESTED_DELIMITER = "__"
# Defaults computed when the process starts; the factory's result here would be this machine's.
DYNAMIC_DEFAULTS: dict[str, str] = {"worker_name": "`<hostname>-<pid>`"}
SIMPLE_TYPES: dict[object, str] = {
    str: "string",
    int: "integer",
    float: "number",
    bool: "boolean",
    Path: "path",
    SecretStr: "secret string",
}
CONSTRAINTS: tuple[tuple[str, str], ...] = (
    ("gt", "> {}"),
    ("ge", "≥ {}"),
    ("lt", "< {}"),
    ("le", "≤ {}"),
    ("min_length", "length ≥ {}"),
    ("max_length", "length ≤ {}"),
    ("pattern", "matching `{}`"),
)

INTRO = """\
# Configuration

Every sdqueue process (worker, client, bridge) reads its settings once at start-up from environment variables
named `SDQUEUE_*`, into one frozen object. This page is generated from that model (`sdqueue.config.Settings`):
regenerate it with `sdqueue contract write`.

- Names: the prefix `SDQUEUE_`, then the setting; a setting inside a group joins group and field with `__`,
  e.g. `SDQUEUE_S3__BUCKET=images`. Names are case-insensitive.
- Lists, tuples and objects are JSON: `SDQUEUE_AUTH__ISSUERS='["a","b"]'`. An object's entries may also be set
  one at a time: `SDQUEUE_MODELS__fast=/models/fast` is the same as `SDQUEUE_MODELS='{"fast": "/models/fast"}'`.
  A whole group may be given as one JSON object too, e.g. `SDQUEUE_LIMITS='{"max_steps": 50}'`.
  Aliases set as `SDQUEUE_MODELS__<alias>` are lower-cased, like every name; use the JSON form for others.
- With neither `SDQUEUE_MODEL` nor `SDQUEUE_MODELS` set, the `default` alias is the offline tiny model, built under
  `<state_dir>/models/tiny`.
- Secrets are `SecretStr`: `repr()` and logs show `**********`, never the value. Their defaults are masked below.
- A `SDQUEUE_*` variable that names no setting is reported as a warning at start-up, not silently ignored; an
  unknown field inside a group (`SDQUEUE_S3__BUKET`) also stops start-up, because groups forbid unknown fields.
"""


def render_configuration_doc() -> str:
    """Return the Markdown reference of every setting, its variable, type, default and description."""
    sections = [INTRO, _table("General", None, _leaf_rows(Settings.model_fields, prefix=ENV_PREFIX))]
    for name, field in Settings.model_fields.items():
        group = _group_model(field)
        if group is not None:
            prefix = f"{ENV_PREFIX}{name.upper()}{NESTED_DELIMITER}"
            sections.append(_table(f"`{name}`", group.__doc__, _leaf_rows(group.model_fields, prefix=prefix)))
    return "\n".join(sections)


def write_configuration_doc(root: Path) -> Path:
    """Write `docs/configuration.md` under `root` and return its path."""
    path = root / CONFIGURATION_DOC_PATH
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_configuration_doc(), encoding="utf-8")
    return path


def stale_configuration_doc(root: Path) -> bool:
    """Say whether `docs/configuration.md` under `root` is missing or differs from what the model renders."""
    path = root / CONFIGURATION_DOC_PATH
    return not path.is_file() or path.read_text(encoding="utf-8") != render_configuration_doc()


def _group_model(field: FieldInfo) -> type[BaseModel] | None:
    annotation = field.annotation
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    return None


def _leaf_rows(fields: dict[str, FieldInfo], *, prefix: str) -> list[str]:
    rows = []
    for name, field in fields.items():
        if _group_model(field) is not None:
            continue
        cells = (f"`{prefix}{name.upper()}`", _type_text(field), _default_text(name, field), field.description or "")
        rows.append("| " + " | ".join(_escape(cell) for cell in cells) + " |")
    return rows


def _table(title: str, description: str | None, rows: list[str]) -> str:
    lines = [f"## {title}", ""]
    if description:
        lines += [description.strip(), ""]
    lines += ["| variable | type | default | description |", "| --- | --- | --- | --- |", *rows]
    return "\n".join(lines) + "\n"


def _escape(cell: str) -> str:
    # A pipe ends a table cell even inside backticks (GitHub-flavoured Markdown).
    return cell.replace("|", "\\|").replace("\n", " ")


def _type_text(field: FieldInfo) -> str:
    text = _annotation_text(field.annotation)
    constraints = _constraints_text(field.metadata)
    return f"{text}, {constraints}" if constraints else text


def _annotation_text(annotation: Any) -> str:
    origin, args = get_origin(annotation), get_args(annotation)
    if origin is Annotated:
        constraints = _constraints_text(list(args[1:]))
        return f"{_annotation_text(args[0])}, {constraints}" if constraints else _annotation_text(args[0])
    if origin is Union or origin is types.UnionType:
        return _union_text(args)
    if origin is Literal:
        return "one of " + ", ".join(f"`{value}`" for value in args)
    if origin is tuple:
        return f"JSON list of {_annotation_text(args[0])}"
    if origin is dict:
        return f"JSON object of {_annotation_text(args[0])} → {_annotation_text(args[1])}"
    return SIMPLE_TYPES.get(annotation, getattr(annotation, "__name__", str(annotation)))


def _union_text(args: tuple[Any, ...]) -> str:
    present = [_annotation_text(arg) for arg in args if arg is not type(None)]
    text = " or ".join(present)
    return f"{text}, optional" if len(present) < len(args) else text


def _constraints_text(metadata: list[Any]) -> str:
    parts = []
    for item in metadata:
        if isinstance(item, FieldInfo):
            parts.append(_constraints_text(item.metadata))
            continue
        for attribute, template in CONSTRAINTS:
            value = getattr(item, attribute, None)
            if value is not None:
                parts.append(template.format(value))
    return ", ".join(parts)


def _default_text(name: str, field: FieldInfo) -> str:
    if name in DYNAMIC_DEFAULTS:
        return DYNAMIC_DEFAULTS[name]
    if field.default_factory is not None:
        return _value_text(field.get_default(call_default_factory=True, validated_data={}))
    if field.default is PydanticUndefined:
        return "required"
    return _value_text(field.default)


def _value_text(value: object) -> str:
    if value is None:
        return "unset"
    if isinstance(value, SecretStr):
        return f"`{_mask_secret(value.get_secret_value())}`"
    if isinstance(value, Enum):
        value = value.value
    if isinstance(value, bool | int | float | list | tuple | dict):
        return f"`{json.dumps(value)}`"
    return f"`{value}`"


def _mask_secret(secret: str) -> str:
    """Show a URL with its password replaced by `***`; any other secret only as `(secret)`."""
    parts = urlsplit(secret)
    if not parts.scheme or not parts.hostname or parts.password is None:
        return "(secret)"
    netloc = f"{parts.username}:***@{parts.netloc.rpartition('@')[2]}"
    return urlunsplit(parts._replace(netloc=netloc))
