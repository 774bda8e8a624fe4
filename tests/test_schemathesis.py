"""Schemathesis against the live admin API: every documented operation, every check.

Two runs (reliability.md (e)): one with the admin token under all of
schemathesis's checks, one without credentials, where every protected operation
must answer 401 (``ignored_auth``). The schema is fetched from the running
gateway, so what is tested is what ``/schema/openapi.json`` really serves.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.generation.modes import GenerationMode
from schemathesis.specs.openapi.checks import ignored_auth

from tests.support.gateway import SHIPPED_POLICY, running_gateway

ADMIN = {"Authorization": "Bearer demo-admin-token"}
EXAMPLES = settings(
    max_examples=30,
    deadline=None,
    derandomize=True,  # the same cases every run: a failure is a regression, not luck
    suppress_health_check=list(HealthCheck),
)


@pytest.fixture(scope="module")
def gateway_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    # A copy of the policy with no test cases beside it: whatever the fuzzer sends to
    # POST /admin/policy/apply is refused, and the repository's file is never written.
    site = tmp_path_factory.mktemp("schemathesis")
    policies = site / "policies.yaml"
    shutil.copy(SHIPPED_POLICY, policies)
    with running_gateway(site / "var", policies=policies) as gw:
        # Some traffic first, so exports and subject access have records to return.
        with httpx.Client(base_url=gw.url, timeout=10) as client:
            for path in ("/klout/v2/user.json/5001/score", "/klout/v2/identity.json/tw/1001"):
                client.get(path, params={"key": "demo-crm-key"})
        yield gw.url


@pytest.fixture(scope="module")
def api_schema(gateway_url: str) -> Any:
    return schemathesis.openapi.from_url(gateway_url + "/schema/openapi.json")


# Every operation the schema documents (the last test keeps this list honest), with
# whether it takes input (negative data needs something to break) and is protected.
OPERATIONS = [
    ("GET", "/healthz", False, False),
    ("GET", "/readyz", False, False),
    ("GET", "/metrics", False, True),
    ("GET", "/admin/policy", False, True),
    ("POST", "/admin/policy/validate", True, True),
    ("POST", "/admin/policy/explain", True, True),
    ("GET", "/admin/audit/public-key", False, True),
    ("GET", "/admin/audit/export", True, True),
    ("GET", "/admin/audit/subject", True, True),
    ("POST", "/admin/objections", True, True),
    ("GET", "/admin/objections", False, True),
    ("DELETE", "/admin/objections", True, True),
    ("GET", "/admin/audit/consistency", True, True),
    ("GET", "/admin/report", True, True),
    ("GET", "/admin/report.json", True, True),
    ("POST", "/admin/policy/replay", True, True),
    ("POST", "/admin/policy/apply", True, True),
]


def _with_credentials() -> list[Any]:
    params = []
    for method, path, takes_input, _ in OPERATIONS:
        params.append(
            pytest.param(method, path, GenerationMode.POSITIVE, id=f"positive {method} {path}")
        )
        if takes_input:  # negative cases include dropping the credentials
            params.append(
                pytest.param(
                    method, path, GenerationMode.NEGATIVE, id=f"negative {method} {path}",
                )
            )  # fmt: skip
    return params


def _without_credentials() -> list[Any]:
    return [pytest.param(method, path, id=f"{method} {path}") for method, path, _, _ in OPERATIONS]


# Not ``schemathesis.pytest.from_fixture``: its lazy loader reads
# ``request.node._nodeid``, which pytest 9 no longer has, so each operation runs
# its own ``@given`` here.
@pytest.mark.parametrize(("method", "path", "mode"), _with_credentials())
def test_admin_api_conforms_with_credentials(
    api_schema: Any, method: str, path: str, mode: GenerationMode
) -> None:
    """All default checks (server errors, status codes, content types, headers,
    response schemas, negative data rejected, auth enforced) with the admin token."""
    operation = api_schema[path][method]

    @EXAMPLES
    @given(case=operation.as_strategy(generation_mode=mode))
    def run(case: Any) -> None:
        case.call_and_validate(headers=ADMIN)

    run()


@pytest.mark.parametrize(("method", "path"), _without_credentials())
def test_admin_api_refuses_callers_without_credentials(
    api_schema: Any, method: str, path: str
) -> None:
    """No credentials: a protected operation answers a documented 401, never data."""
    operation = api_schema[path][method]
    protected = bool(operation.definition.raw.get("security"))

    @EXAMPLES
    @given(case=operation.as_strategy())
    def run(case: Any) -> None:
        case.headers = {
            k: v for k, v in (case.headers or {}).items() if k.lower() != "authorization"
        }
        response = case.call()
        if protected:
            assert response.status_code == 401, response.text
        case.validate_response(response, additional_checks=[ignored_auth])

    run()


def test_the_schema_documents_every_admin_route(api_schema: Any, gateway_url: str) -> None:
    """The runs above cover the admin API only if the schema lists it."""
    spec = httpx.get(gateway_url + "/schema/openapi.json").json()
    documented = {
        (method.upper(), path)
        for path, item in spec["paths"].items()
        for method in item
        if method in ("get", "post", "put", "patch", "delete")
    }
    assert documented == {(method, path) for method, path, _, _ in OPERATIONS}
    assert api_schema["/healthz"]["GET"] is not None
