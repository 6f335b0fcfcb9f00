"""Validation of --json documents against the schemas in docs/schema (draft 2020-12).

Every test that reads a command's --json output goes through validate(), so
the schemas are checked against what the commands really print.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

import jsonschema
from referencing import Registry, Resource

SCHEMA_DIR = Path(__file__).resolve().parent.parent / "docs" / "schema"
BASE = "https://safcm.invalid/schema/1/"


@functools.cache
def _registry() -> Registry:
    resources = []
    for path in sorted(SCHEMA_DIR.glob("*.json")):
        schema = json.loads(path.read_text())
        assert schema["$id"] == BASE + path.name, path
        jsonschema.Draft202012Validator.check_schema(schema)
        resources.append((schema["$id"], Resource.from_contents(schema)))
    return Registry().with_resources(resources)


def validator(name: str) -> jsonschema.Draft202012Validator:
    """The validator of docs/schema/`name`.json, its references resolved within docs/schema."""
    registry = _registry()
    schema = registry.contents(BASE + f"{name}.json")
    return jsonschema.Draft202012Validator(
        schema, registry=registry, format_checker=jsonschema.FormatChecker()
    )


def validate(document: Any, name: str) -> Any:
    """Raise jsonschema.ValidationError unless `document` fits schema `name`
    ("run", "jobs-list", "jobs-show", "show", "keys-list", "error"); else return it."""
    validator(name).validate(document)
    return document


def loads(text: str, name: str) -> Any:
    """Parse one command's --json output and validate it against schema `name`."""
    return validate(json.loads(text), name)
