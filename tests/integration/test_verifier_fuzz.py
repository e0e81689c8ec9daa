"""Property-based fuzzing of the verifier API from its own OpenAPI schema (schemathesis).

Every generated request -- valid or not -- must get a non-5xx answer that conforms to the schema.
"""


import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.generation import GenerationMode


@pytest.fixture(scope="module")
def api_schema(start_verifier):
    _, url = start_verifier("verifier.timeout_s=2")
    return schemathesis.openapi.from_url(f"{url}/openapi.json")


FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_no_server_errors(api_schema, mode):
    # schemathesis' own pytest plugin does not load under this pytest; its strategies do.
    operation = api_schema["/v1/verify"]["POST"]
    seen: set[int] = set()

    @FUZZ
    @given(case=operation.as_strategy(generation_mode=mode))
    def check(case):
        response = case.call(timeout=30)
        case.validate_response(response, checks=[not_a_server_error])
        assert response.status_code < 500
        seen.add(response.status_code)

    check()
    # both valid (200) and rejected (4xx) requests were really sent
    assert (200 in seen) if mode == GenerationMode.POSITIVE else any(400 <= c < 500 for c in seen)
