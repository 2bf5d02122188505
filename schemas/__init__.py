"""JSON Schemas (Draft 2020-12) for every stage1 artifact, and a tiny validate helper.

Schemas ship as package data (``schemas/*.json``) and are loaded with importlib.resources so an
installed wheel validates exactly like a checkout.
"""

from __future__ import annotations

import json
from functools import cache
from importlib import resources
from typing import Any


class SchemaError(ValueError):
    """An artifact does not match its schema."""


def available() -> list[str]:
    """Names of all shipped schemas (file stem without ``.schema.json``)."""
    return sorted(
        p.name.removesuffix(".schema.json")
        for p in resources.files(__name__).iterdir()
        if p.name.endswith(".schema.json")
    )


@cache
def load_schema(name: str) -> dict[str, Any]:
    """The parsed schema ``schemas/<name>.schema.json``."""
    path = resources.files(__name__) / f"{name}.schema.json"
    if not path.is_file():
        raise KeyError(f"no schema named {name!r}; available: {available()}")
    return json.loads(path.read_text())


def validate(obj: Any, name: str) -> Any:
    """Validate ``obj`` against schema ``name``; raise SchemaError listing every problem."""
    import jsonschema

    validator = jsonschema.Draft202012Validator(load_schema(name))
    errors = sorted(validator.iter_errors(obj), key=lambda e: list(e.absolute_path))
    if errors:
        lines = [f"{'/'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}" for e in errors]
        raise SchemaError(f"{name}: " + "; ".join(lines[:5]))
    return obj
