"""Session configuration → Airflow Params, so the UI trigger form shows every field with its bounds."""
from __future__ import annotations

from typing import Any

from airflow.sdk import Param

from .config import SessionConfig

_SCHEMA_KEYS = ("type", "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "enum", "minLength",
                "maxLength", "pattern")


# Unit suffixes of field names (docs/conventions.md) and how the form shows them.
_UNIT_SUFFIXES = (("_e_a2", "e⁻/Å²"), ("_kv", "kV"), ("_mm", "mm"), ("_deg", "°"), ("_px", "px"), ("_nm", "nm"),
                  ("_s", "s"), ("_a", "Å"))


_ACRONYMS = {"eer": "EER", "class2d": "Class2D", "class3d": "Class3D", "ctf": "CTF"}


def form_title(field_name: str) -> str:
    """A readable form label from a field name with a unit suffix: `pixel_size_a` → "Pixel size (Å)"."""
    suffix, unit = next(((s, u) for s, u in _UNIT_SUFFIXES if field_name.endswith(s)), ("", ""))
    words = " ".join(_ACRONYMS.get(word, word) for word in field_name.removesuffix(suffix).split("_"))
    label = f"{words[0].upper()}{words[1:]}"
    return f"{label} ({unit})" if unit else label


def _param_schema(prop: dict[str, Any]) -> dict[str, Any]:
    """Flatten pydantic's `anyOf: [X, null]` into one JSON-schema dict the Airflow form understands."""
    schema = {key: prop[key] for key in _SCHEMA_KEYS if key in prop}
    if "anyOf" in prop:
        types: list[str] = []
        for option in prop["anyOf"]:
            types.append(option.get("type", "null"))
            schema.update({k: option[k] for k in _SCHEMA_KEYS if k in option and k != "type"})
        schema["type"] = types
    if "const" in prop:
        schema["enum"] = [prop["const"]]
    return schema


def session_params(overrides: dict[str, Any] | None = None) -> dict[str, Param]:
    """One Param per SessionConfig input field: default, type, bounds, description and form section.

    `overrides` replaces defaults (a recipe's own defaults), validated through the model first.
    """
    defaults = SessionConfig.model_validate(overrides or {})
    schema = SessionConfig.model_json_schema(mode="validation")
    params: dict[str, Param] = {}
    for name, prop in schema["properties"].items():
        field = SessionConfig.model_fields[name]
        extra = field.json_schema_extra or {}
        params[name] = Param(
            getattr(defaults, name),
            title=form_title(name),
            description=field.description,
            section=extra.get("section"),
            **_param_schema(prop),
        )
    return params
