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

[checks.negative_data_rejection]
expected-statuses = ["400", "401", "403", "404", "406", "413", "414", "415", "422", "428"]
""")


def _app_and_key(folder: Path, *, keyed: bool) -> tuple[object, str | None]:
    registry = helpers.write_registry(folder, datasets_dir=folder / "datasets")
    keys = KeyStore(folder / "keys.json")
    admin = keys.add("fuzzer", "admin") if keyed else None
    app = create_app(Settings(registry=registry, datasets_dir=folder / "datasets",
                              keys_file=keys.path if keyed else None, redis_url=None,
                              rate_limit_per_minute=1_000_000, max_jobs_per_key=1_000_000))
    return app, admin


# Built at import: schemathesis parametrizes the tests from the served documents.
KEYED_APP, ADMIN_KEY = _app_and_key(Path(tempfile.mkdtemp(prefix="krypton-keyed-")), keyed=True)
OPEN_APP, _ = _app_and_key(Path(tempfile.mkdtemp(prefix="krypton-open-")), keyed=False)
keyed = schemathesis.openapi.from_asgi("/openapi.json", KEYED_APP, config=CONFIG)
running_open = schemathesis.openapi.from_asgi("/openapi.json", OPEN_APP, config=CONFIG)


@keyed.parametrize()
@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
def test_every_answer_with_keys_conforms_to_the_openapi_document(
        case: schemathesis.Case) -> None:
    case.call_and_validate(headers={"Authorization": f"Bearer {ADMIN_KEY}"})


@running_open.parametrize()
@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
def test_every_answer_running_open_conforms_to_the_openapi_document(
        case: schemathesis.Case) -> None:
    # The embedded default a new user starts: no keys, loopback.
    case.call_and_validate()
