"""Every operation of the app's OpenAPI document fuzzed by schemathesis against the running ingress.

The promise: bad input never breaks the service. Whatever schemathesis sends (valid and invalid
parameters and bodies, with a valid bearer token holding every scope), the answer is never a 5xx,
its status code is one the document lists, and its body matches the documented schema. Task
references are sometimes real tasks (in several states), so approve, reject, cancel and retry
meet real transitions, not only 404s, and sometimes awkward ones (Unicode digits, huge numbers).
"""

from __future__ import annotations

import asyncio
import hashlib
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from fixfleet.models import NewTask, Source, TaskStatus
from fixfleet.store import Store
from serve_app.app import create_app
from tests.ingress_server import running_ingress
from tests.reliability.harness import REPO, TOKEN, chaos_settings, empty_tables, report

pytestmark = pytest.mark.chaos
MAX_EXAMPLES = 40  # per operation: well under a minute for the whole document here
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
S = TaskStatus
# Real tasks for path parameters, one per state a task API call may meet.
PATHS = {
    "received": [],
    "awaiting": [S.PLANNING, S.AWAITING_APPROVAL],
    "approved": [S.PLANNING, S.AWAITING_APPROVAL, S.APPROVED],
    "failed": [S.FAILED],
    "completed": [S.PLANNING, S.AWAITING_APPROVAL, S.APPROVED, S.EXECUTING, S.COMPLETED],
}

schema = schemathesis.openapi.from_dict(create_app().openapi())  # the document the running app serves
tally: Counter[str] = Counter()
failures: list[dict[str, Any]] = []
real_keys: list[str] = []


# References a person could type that look like task numbers but are not plain ASCII ones.
AWKWARD_REFS = ["\u00b2", "FF-\u0663", "\uff11\uff12", "99999999999999999999999", "FF-0", "-1", " 1 ", "ff-1"]


@schema.hook
def map_path_parameters(context: Any, path_parameters: dict[str, Any] | None) -> dict[str, Any] | None:
    """A third of the generated task references become a real task's key, a third an awkward one."""
    ref = (path_parameters or {}).get("ref")
    if ref is None or not real_keys:
        return path_parameters
    digest = hashlib.sha256(str(ref).encode()).digest()
    if digest[0] % 3 == 0:
        return {**path_parameters, "ref": real_keys[digest[1] % len(real_keys)]}
    if digest[0] % 3 == 1:
        return {**path_parameters, "ref": AWKWARD_REFS[digest[1] % len(AWKWARD_REFS)]}
    return path_parameters


async def make_tasks(database_url: str) -> list[str]:
    await empty_tables(database_url)
    store = await Store.connect(database_url, max_size=2)
    try:
        keys = []
        for title, path in PATHS.items():
            task, _ = await store.create_task(NewTask(source=Source.API, repo=REPO, title=title))
            for n, status in enumerate(path):
                changes = {"plan_version": 1, "plan": {"root_cause": "fuzz"}} if status == S.AWAITING_APPROVAL else None
                await store.transition(task.id, status, actor="fuzz", reason=f"step {n}", changes=changes)
            keys.append(task.key)
        return keys
    finally:
        await store.close()


@pytest.fixture(scope="module")
def ingress(database_url: str, redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    real_keys[:] = asyncio.run(make_tasks(database_url))
    home: Path = tmp_path_factory.mktemp("fuzz-home")
    with running_ingress(chaos_settings(database_url, redis_url, home)) as url:
        yield url
    report(
        "openapi_fuzz",
        operations=len(list(schema.get_all_operations())),
        max_examples_per_operation=MAX_EXAMPLES,
        requests=sum(v for k, v in tally.items() if k.isdigit()),
        statuses=dict(sorted((k, v) for k, v in tally.items() if k.isdigit())),
        server_errors=sum(v for k, v in tally.items() if k.isdigit() and int(k) >= 500),
        check_failures=len(failures),
        failed_operations=sorted({f["operation"] for f in failures}),
    )


@schema.parametrize()
@settings(max_examples=MAX_EXAMPLES, deadline=None, phases=[Phase.explicit, Phase.generate],
          suppress_health_check=list(HealthCheck))
def test_every_operation_answers_within_its_schema_and_never_5xx(case: schemathesis.Case, ingress: str) -> None:
    headers = {"Authorization": f"Bearer {TOKEN}"}
    response = case.call(base_url=ingress, headers=headers, timeout=30)
    tally[str(response.status_code)] += 1
    try:
        case.validate_response(response, checks=CHECKS, headers=headers)
    except BaseException as exc:  # schemathesis' FailureGroup is a BaseExceptionGroup
        failures.append({"operation": f"{case.method} {case.path}", "status": response.status_code,
                         "error": str(exc)[:2000]})
        raise
