"""The fakes refuse what the providers do not publish (tests/fakes/published.py): a wrong path or
method, or a body GitHub's OpenAPI schema refuses, fails a test instead of passing against our
own idea of the API; what fixfleet sends passes."""

from __future__ import annotations

import pytest

from tests.fakes.published import PublishedApi


@pytest.mark.parametrize(("api", "method", "path", "body"), [
    ("github", "DELETE", "/repos/acme/api/git/refs/heads/fixfleet/FF-1", None),
    ("github", "POST", "/repos/acme/api/issues/8/labels", {"labels": ["fixfleet", "priority: high"]}),
    ("github", "PATCH", "/repos/acme/api/pulls/8", {"state": "closed"}),
    ("github", "POST", "/graphql", {"query": "mutation {}"}),
    ("sentry", "PUT", "/api/0/organizations/acme/issues/42/", {"status": "resolvedInNextRelease"}),
    ("sentry", "GET", "/api/0/organizations/acme/issues/42/events/latest/", None),
    ("jira", "POST", "/rest/api/3/issue/OPS-7/remotelink", {}),
    ("slack", "POST", "/api/chat.update", {}),
])
def test_what_fixfleet_sends_is_published(api: str, method: str, path: str, body: object) -> None:
    assert PublishedApi.load(api).check(method, path, body) is None


@pytest.mark.parametrize(("api", "method", "path", "body", "why"), [
    ("github", "POST", "/repos/acme/api/pulls/8/close", None, "no such path"),
    ("github", "PUT", "/repos/acme/api/pulls/8", {"state": "closed"}, "allows GET, PATCH"),
    ("github", "PATCH", "/repos/acme/api/pulls/8", {"state": "merged"}, "breaks github's published schema"),
    ("github", "POST", "/repos/acme/api/issues/8/labels", {"labels": []}, "breaks"),
    ("sentry", "GET", "/api/0/issues/42/events/latest/", None, "no such path"),  # the older, unpublished path
    ("jira", "POST", "/rest/api/3/issue/OPS-7/remotelinks", {}, "no such path"),
    ("slack", "POST", "/api/chat.updateMessage", {}, "no such path"),
])
def test_what_a_provider_does_not_publish_is_refused(api: str, method: str, path: str, body: object, why: str) -> None:
    problem = PublishedApi.load(api).check(method, path, body)
    assert problem is not None and why in problem
