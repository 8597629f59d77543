"""The OpenAPI document tells the truth: schemathesis, all checks, against the running app.

Every operation gets generated requests (valid and invalid, with the admin
key), and every answer is checked against the document: no 5xx, every status
declared, problem+json where it says so, headers and bodies as described,
authentication not ignored. One setting departs from schemathesis' defaults:
a request the schema allows may still be refused with 413, 415 or 422, since
a schema cannot say that the bytes of an ``image`` part must be a PNG, JPEG
or TIFF, nor that a patch must fit the chosen model's input; and one it does
not allow may be refused with 413, 414 or 415 as well as 4xx of validation.
Both modes are checked: with keys (the admin key on every request) and
running open, as a new user starts it.
"""

from __future__ import annotations

import copy
import json
import tempfile
from pathlib import Path
from typing import Any

import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.config import SchemathesisConfig

from krypton.service.app import create_app
from krypton.service.auth import KeyStore
from krypton.service.config import Settings
from krypton.service.openapi import without_keys
from tests.service import helpers

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = 25
"""Generated requests per operation and phase: enough to find what the fuzzing runs
recorded in RELIABILITY.md found, small enough for CI."""

CONFIG = SchemathesisConfig.from_str("""
[checks.positive_data_acceptance]
expected-statuses = ["2xx", "3xx", "401", "403", "404", "409", "413", "415", "422", "429"]

[checks.negative_data_rejection]
expected-statuses = ["400", "401", "403", "404", "406", "413", "414", "415", "422", "428"]
""")


class _Service:
    """An app built on its first request, in its own temporary folder: importing this
    module builds nothing, and a run that selects no conformance test builds no app."""

    def __init__(self, *, keyed: bool) -> None:
        self.keyed = keyed
        self._app: Any = None
        self._key: str | None = None
        self._folder: tempfile.TemporaryDirectory[str] | None = None

    def key(self) -> str | None:
        """The admin key (``None`` running open), building the app first."""
        self._build()
        return self._key

    def _build(self) -> Any:
        if self._app is None:
            self._folder = tempfile.TemporaryDirectory(prefix="krypton-conformance-")
            folder = Path(self._folder.name)
            registry = helpers.write_registry(folder, datasets_dir=folder / "datasets")
            keys = KeyStore(folder / "keys.json")
            self._key = keys.add("fuzzer", "admin") if self.keyed else None
            self._app = create_app(Settings(
                registry=registry, datasets_dir=folder / "datasets",
                keys_file=keys.path if self.keyed else None, redis_url=None,
                rate_limit_per_minute=1_000_000, max_jobs_per_key=1_000_000))
        return self._app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await self._build()(scope, receive, send)


def _schema(document: dict[str, Any], service: _Service) -> Any:
    """The exported document (kept equal to what a keyed app serves by
    tests/test_openapi.py) in front of ``service``."""
    schema = schemathesis.openapi.from_dict(document, config=CONFIG)
    schema.app, schema.location = service, "/openapi.json"
    return schema


DOCUMENT = json.loads((ROOT / "openapi" / "openapi.json").read_text(encoding="utf-8"))
KEYED, OPEN = _Service(keyed=True), _Service(keyed=False)
keyed = _schema(copy.deepcopy(DOCUMENT), KEYED)
running_open = _schema(without_keys(copy.deepcopy(DOCUMENT)), OPEN)


@keyed.parametrize()
@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
def test_every_answer_with_keys_conforms_to_the_openapi_document(
        case: schemathesis.Case) -> None:
    case.call_and_validate(headers={"Authorization": f"Bearer {KEYED.key()}"})


@running_open.parametrize()
@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
def test_every_answer_running_open_conforms_to_the_openapi_document(
        case: schemathesis.Case) -> None:
    # The embedded default a new user starts: no keys, loopback.
    case.call_and_validate()
