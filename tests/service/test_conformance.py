"""The OpenAPI document tells the truth: schemathesis, all checks, against the running app.

Every operation gets generated requests (valid and invalid, with the admin
key), and every answer is checked against the document: no 5xx, every status
declared, problem+json where it says so, headers and bodies as described,
authentication not ignored. One setting departs from schemathesis' defaults:
a request the schema allows may still be refused with 413, 415 or 422, since
a schema cannot say that the bytes of an ``image`` part must be a PNG, JPEG
or TIFF, nor that a patch must fit the chosen model's input.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.config import SchemathesisConfig

from krypton.service.app import create_app
from krypton.service.auth import KeyStore
from krypton.service.config import Settings
from tests.service import helpers

EXAMPLES = 25
"""Generated requests per operation and phase: enough to find what the fuzzing runs
recorded in RELIABILITY.md found, small enough for CI."""

CONFIG = SchemathesisConfig.from_str("""
[checks.positive_data_acceptance]
expected-statuses = ["2xx", "3xx", "401", "403", "404", "409", "413", "415", "422", "429"]
""")


def _app_and_key(folder: Path) -> tuple[object, str]:
    registry = helpers.write_registry(folder, datasets_dir=folder / "datasets")
    keys = KeyStore(folder / "keys.json")
    admin = keys.add("fuzzer", "admin")
    app = create_app(Settings(registry=registry, datasets_dir=folder / "datasets",
                              keys_file=keys.path, redis_url=None,
                              rate_limit_per_minute=1_000_000))
    return app, admin


# Built at import: schemathesis parametrizes the test from the served document.
APP, ADMIN_KEY = _app_and_key(Path(tempfile.mkdtemp(prefix="krypton-conformance-")))
schema = schemathesis.openapi.from_asgi("/openapi.json", APP, config=CONFIG)


@schema.parametrize()
@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
def test_every_answer_conforms_to_the_openapi_document(case: schemathesis.Case) -> None:
    case.call_and_validate(headers={"Authorization": f"Bearer {ADMIN_KEY}"})
