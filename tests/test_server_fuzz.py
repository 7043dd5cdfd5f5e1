"""schemathesis fuzzes the OpenAPI of a live `featuredb serve` (real HTTP on loopback) over a small store.

Every operation gets schemathesis's boundary cases and generated valid and invalid requests, half of them
pointed at the store's real model and source (so they reach rows, not only 404s) and some with extreme
integers. Every answer must be below 500, match the schema (status codes, content types, headers, bodies),
refuse schema-invalid requests, and hold no traceback and no filesystem path of the server. The store was
imported, not ingested, so it has no model: the inference routes must answer 4xx too.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Iterator

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode, checks
from schemathesis.core.failures import Failure, FailureGroup

from conftest import imported_store
from featuredb.server.app import create_app
from loopback import serve_in_thread

TOKEN = "fuzz-token"
MAX_EXAMPLES = 25
MODEL, SOURCE, SET = "demo-model", "6-demo-transcoder", "demo-transcoder"
EXTREME_INTS = (-1, -2**63 - 1, 2**31, 2**63, 2**64 + 1, 10**30)
TRACEBACK = re.compile(r"Traceback \(most recent call last\)|File \"[^\"]+\", line \d+")
# No 5xx; status codes, content types, headers and bodies as documented; schema-invalid requests refused. Not
# positive_data_acceptance: a schema-valid request may still name a feature or source the store lacks (4xx).
CHECKS = [checks.not_a_server_error, checks.status_code_conformance, checks.content_type_conformance,
          checks.response_schema_conformance, checks.response_headers_conformance, checks.negative_data_rejection]


@pytest.fixture(scope="module")
def fuzz_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 20-feature imported store."""
    return imported_store(tmp_path_factory.mktemp("fuzz"), n_features=20, n_activations=4, ctx_len=8, n_top=3)


@pytest.fixture(scope="module")
def api(fuzz_store: Path) -> Iterator[Any]:
    """The live server's schema, loaded from its /openapi.json; writes allowed with the token."""
    with serve_in_thread(create_app(str(fuzz_store), write_token=TOKEN)) as url:
        schema = schemathesis.openapi.from_url(f"{url}/openapi.json")
        schema.config.checks.negative_data_rejection.expected_statuses.append("413")  # a body over the size limit
        yield schema


def server_paths(db: Path) -> list[str]:
    """Paths of the server's machine an answer must never show."""
    return [str(db.parent), str(db.resolve().parent), str(Path.cwd()), str(Path(schemathesis.__file__).parent)]


def aim_at_the_store(case: Any, extreme: int | None) -> None:
    """Name the store's model, source and feature 1 in the request; put `extreme` into its other integers."""
    for part in (case.path_parameters, case.body, *(case.body if isinstance(case.body, list) else [])):
        if not isinstance(part, dict):
            continue
        for key, value in part.items():
            if extreme is not None and isinstance(value, int) and not isinstance(value, bool):
                part[key] = extreme
        for key, value in (("modelId", MODEL), ("layer", SOURCE), ("source", SOURCE), ("sourceSet", SET),
                           ("index", 1)):
            if key in part:
                part[key] = value


def check(case: Any, db: Path) -> str | None:
    """One request: None when every check passes, else a line naming the failures and a curl command."""
    try:
        response = case.call_and_validate(headers={"x-api-key": TOKEN}, checks=CHECKS, timeout=30)
    except (FailureGroup, Failure) as e:  # schemathesis's failed checks
        found = "; ".join(str(f).strip().splitlines()[0] for f in getattr(e, "exceptions", [e]))
        return f"{case.operation.label}: {found[:200]} | {case.as_curl_command()[:400]}"
    body = response.text
    if TRACEBACK.search(body) or any(p in body for p in server_paths(db)):
        return f"{case.operation.label}: traceback or path in {body[:300]!r}"
    return None


def fuzz_operation(operation: Any, mode: GenerationMode, db: Path) -> list[str]:
    """Failures of up to MAX_EXAMPLES generated requests to one operation."""
    failures: list[str] = []

    @given(case=operation.as_strategy(generation_mode=mode), real=st.booleans(),
           extreme=st.none() | st.sampled_from(EXTREME_INTS))
    @settings(max_examples=MAX_EXAMPLES, deadline=None, phases=[Phase.explicit, Phase.generate], database=None,
              suppress_health_check=list(HealthCheck))
    def run(case: Any, real: bool, extreme: int | None) -> None:
        if real and mode == GenerationMode.POSITIVE:
            aim_at_the_store(case, extreme)
        failure = check(case, db)
        if failure:
            failures.append(failure)

    try:
        run()
    except Unsatisfiable:  # negative mode on an operation with no parameters or body: nothing invalid to send
        pass
    return failures


def operations(api: Any) -> list[Any]:
    """Every operation of the schema (at least the 15 routes the server has)."""
    found = [result.ok() for result in api.get_all_operations()]
    assert len(found) >= 15, [op.label for op in found]
    return found


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_fuzzed_requests_get_no_5xx_and_no_traceback_or_path(api: Any, fuzz_store: Path, mode: GenerationMode) -> None:
    failures = [f for op in operations(api) for f in fuzz_operation(op, mode, fuzz_store)]
    assert not failures, "\n".join(failures)


def test_boundary_requests_get_no_5xx_and_no_traceback_or_path(api: Any, fuzz_store: Path) -> None:
    """schemathesis's coverage cases (each bound, one past it, wrong types, missing fields), every other valid one
    aimed at the store."""
    failures = []
    for op in operations(api):
        cases = api.iter_coverage_cases(op, generation_modes=list(GenerationMode),
                                        generation_config=api.config.generation_for(operation=op))
        for i, case in enumerate(cases):
            if i % 2 and case.meta.generation.mode == GenerationMode.POSITIVE:
                aim_at_the_store(case, None)
            failures.append(check(case, fuzz_store))
    assert not [f for f in failures if f], "\n".join(f for f in failures if f)
    assert len(failures) > 300, "the coverage phase generated cases"
