"""The web console at /ui/ over HTTP: sign-in, sessions, CSRF, the pages and the actions.

The app runs under a real uvicorn with the real store and Redis; agent sessions are what the
session runner records (tests/console_world.py). Browser tests: tests/test_console_browser.py.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from redis.asyncio import Redis

from fixfleet.config import Settings
from fixfleet.models import Source, TaskStatus
from fixfleet.services import SCALE_DECISIONS_KEY
from fixfleet.store import Store
from serve_app.console.render import markdown, safe_href
from serve_app.console.recorded import RecordedSessions
from tests.console_world import (
    A_DIFF,
    APPROVE,
    PLANNER,
    READ,
    SUBMIT,
    TOKENS,
    Recording,
    a_plan,
    act,
    an_evidence,
    beat,
    closing_messages,
    console_settings,
    csrf_in,
    flash_after,
    new_task,
    opening_messages,
    planned_task,
    post_plan,
    recorded,
    signed_in,
)
from tests.ingress_server import running_ingress

SESSION = "5b0d6c1e-9a47-4f7e-8d61-2f1f0b7f3c10"


@pytest.fixture
def console(settings: Settings, store: Store, redis: Redis) -> Iterator[str]:
    with running_ingress(console_settings(settings)) as url:
        yield url


async def events_of(store: Store, key: str) -> list:
    return await store.events(key)


# --- nothing without a session ------------------------------------------------------------------


async def test_nothing_is_shown_without_a_session(console: str, store: Store) -> None:
    task = await planned_task(store)
    anonymous = httpx.Client(base_url=console, follow_redirects=False)
    for path in ("/ui/", f"/ui/tasks/{task.key}", "/ui/pool", f"/ui/tasks/{task.key}/sessions/{SESSION}",
                 "/ui/tasks/rows"):
        answer = anonymous.get(path)
        assert answer.status_code == 303 and answer.headers["location"].startswith("/ui/login?next=/ui/"), path
        assert task.title not in answer.text
    poll = anonymous.get(f"/ui/tasks/{task.key}/poll", headers={"HX-Request": "true"})
    assert poll.status_code == 401 and poll.headers["HX-Redirect"].startswith("/ui/login")
    post = anonymous.post(f"/ui/tasks/{task.key}/do/approve", data={"plan_version": "1", "csrf": "guess"})
    assert post.status_code == 401
    assert (await store.get_task(task.key)).status == TaskStatus.AWAITING_APPROVAL
    forged_cookie = httpx.Client(base_url=console, cookies={"fixfleet_console": "made-up"}, follow_redirects=False)
    assert forged_cookie.get("/ui/").status_code == 303


def test_sign_in_turns_a_token_into_a_strict_httponly_cookie(console: str) -> None:
    client = httpx.Client(base_url=console, follow_redirects=False)
    form = client.get("/ui/login")
    assert 'type="password"' in form.text and 'for="token"' in form.text
    wrong = client.post("/ui/login", data={"token": "tok-guessed", "csrf": csrf_in(form.text)})
    assert wrong.status_code == 401 and "is not one of this platform" in wrong.text
    assert "fixfleet_console=" not in wrong.headers.get("set-cookie", "").replace("fixfleet_console_signin", "")
    answer = client.post("/ui/login", data={"token": APPROVE, "csrf": csrf_in(wrong.text), "next": "/ui/pool"})
    assert answer.status_code == 303 and answer.headers["location"] == "/ui/pool"
    cookie = next(c for c in answer.headers.get_list("set-cookie") if c.startswith("fixfleet_console="))
    attributes = {part.strip().split("=")[0].lower() for part in cookie.split(";")}
    assert {"httponly", "path", "max-age"} <= attributes and "samesite=strict" in cookie.lower()
    assert "secure" not in attributes  # plain http here: a Secure cookie would never come back
    assert APPROVE not in cookie
    assert "Signed in as <strong>lead</strong>" in client.get("/ui/pool").text

    # Behind a proxy that ends TLS: both cookies are Secure (the test sends the sign-in form's back
    # by hand, as a browser on https would).
    behind_tls = httpx.Client(base_url=console, follow_redirects=False, headers={"X-Forwarded-Proto": "https"})
    form = behind_tls.get("/ui/login")
    signin_cookie = form.headers["set-cookie"]
    assert "; secure" in signin_cookie.lower()
    answer = behind_tls.post("/ui/login", data={"token": READ, "csrf": csrf_in(form.text)},
                             headers={"Cookie": signin_cookie.split(";")[0]})
    assert "; secure" in next(c for c in answer.headers.get_list("set-cookie") if c.startswith("fixfleet_console=")).lower()


def test_sign_in_refuses_a_form_from_elsewhere_and_an_open_redirect(console: str) -> None:
    client = httpx.Client(base_url=console, follow_redirects=False)
    # A page on another site posting a token of its choosing (login CSRF): no sign-in form cookie.
    assert client.post("/ui/login", data={"token": READ, "csrf": "anything"}).status_code == 403
    csrf = csrf_in(client.get("/ui/login").text)
    cross = client.post("/ui/login", data={"token": READ, "csrf": csrf}, headers={"Sec-Fetch-Site": "cross-site"})
    assert cross.status_code == 403
    csrf = csrf_in(client.get("/ui/login").text)
    answer = client.post("/ui/login", data={"token": READ, "csrf": csrf, "next": "//evil.example/ui/"})
    assert answer.status_code == 303 and answer.headers["location"] == "/ui/"


def test_sign_out_ends_the_session(console: str) -> None:
    client, csrf = signed_in(console, READ)
    kept = dict(client.cookies)
    assert client.post("/ui/logout", data={}).status_code == 403  # sign-out is a form like any other
    answer = client.post("/ui/logout", data={"csrf": csrf})
    assert answer.status_code == 303 and answer.headers["location"] == "/ui/login"
    replay = httpx.Client(base_url=console, cookies=kept, follow_redirects=False)  # the old cookie, kept by an attacker
    assert replay.get("/ui/").status_code == 303


async def test_removing_or_changing_the_token_ends_its_sessions(settings: Settings, store: Store, redis: Redis) -> None:
    with running_ingress(console_settings(settings)) as url:
        reader, _ = signed_in(url, READ)
        lead, _ = signed_in(url, APPROVE)
        cookies = {"reader": dict(reader.cookies), "lead": dict(lead.cookies)}
    remaining = [t for t in TOKENS if t["name"] != "reader"]
    rotated = [t | {"token": "tok-approve-rotated-999"} if t["name"] == "lead" else t for t in remaining]
    with running_ingress(console_settings(settings, rotated)) as url:
        for name, jar in cookies.items():
            answer = httpx.get(f"{url}/ui/", cookies=jar, follow_redirects=False)
            assert answer.status_code == 303 and "/ui/login" in answer.headers["location"], name
        still, _ = signed_in(url, SUBMIT)  # a token still configured signs in as before
        assert still.get("/ui/").status_code == 200


async def test_pages_carry_a_strict_content_security_policy(console: str, store: Store) -> None:
    task = await planned_task(store)
    client, _ = signed_in(console, READ)
    for path in ("/ui/login", "/ui/", f"/ui/tasks/{task.key}", "/ui/pool", "/ui/static/console.css",
                 "/ui/static/htmx.min.js"):
        headers = client.get(path).headers
        policy = headers["content-security-policy"]
        assert "script-src 'self'" in policy and "unsafe-inline" not in policy and "unsafe-eval" not in policy, path
        assert "frame-ancestors 'none'" in policy and headers["x-content-type-options"] == "nosniff", path
    assert client.get("/ui/").headers["cache-control"] == "no-store"
    assert "content-security-policy" not in httpx.get(f"{console}/health").headers  # the API is left alone
    page = client.get(f"/ui/tasks/{task.key}").text
    assert not re.search(r"<script(?![^>]*\bsrc=\"/ui/static/)", page)  # no inline script
    assert not re.search(r"\son[a-z]+=", page) and "style=" not in page  # no inline handler, no inline style


# --- CSRF and scopes on actions -----------------------------------------------------------------


async def test_a_forged_post_without_the_csrf_token_is_refused(console: str, store: Store) -> None:
    task = await planned_task(store)
    client, csrf = signed_in(console, APPROVE)
    before = len(await events_of(store, task.key))
    attempts = {
        "no token": act(client, task.key, "approve", None, plan_version=1),
        "another token": act(client, task.key, "approve", "x" * len(csrf), plan_version=1),
        "from another site": client.post(f"/ui/tasks/{task.key}/do/approve", data={"plan_version": "1", "csrf": csrf},
                                         headers={"Sec-Fetch-Site": "cross-site"}),
    }
    for attack, answer in attempts.items():
        assert answer.status_code == 403 and "Refused: this form" in answer.text, attack
    after = await store.get_task(task.key)
    assert after.status == TaskStatus.AWAITING_APPROVAL and len(await events_of(store, task.key)) == before


async def test_a_read_only_token_sees_no_actions_and_a_hand_drawn_approve_is_refused(console: str, store: Store) -> None:
    task = await planned_task(store)
    client, csrf = signed_in(console, READ)
    page = client.get(f"/ui/tasks/{task.key}").text
    assert "/do/" not in page and "Approve plan" not in page and "your token reads only" in page
    assert "keep tzinfo in parse_date()" in page  # it does see the plan
    line = flash_after(client, act(client, task.key, "approve", csrf, plan_version=task.plan_version))
    assert line == "approve refused: the token 'reader' lacks the approve scope"
    assert (await store.get_task(task.key)).status == TaskStatus.AWAITING_APPROVAL
    refused = (await events_of(store, task.key))[-1]
    assert (refused.actor, refused.reason) == ("api:reader", "approve refused: the token 'reader' lacks the approve scope")
    # A submit token steers but does not decide: pause is offered, approve is not.
    steering, csrf = signed_in(console, SUBMIT)
    page = steering.get(f"/ui/tasks/{task.key}").text
    assert "/do/pause" in page and "/do/approve" not in page
    assert flash_after(steering, act(steering, task.key, "reject", csrf, reason="no")).startswith("reject refused")


async def test_approving_goes_through_the_one_handler_with_its_plan_version_guard(console: str, store: Store) -> None:
    task = await planned_task(store)
    client, csrf = signed_in(console, APPROVE)
    page = client.get(f"/ui/tasks/{task.key}").text
    assert f'name="plan_version" value="{task.plan_version}"' in page
    # The planner posts v2 while the reviewer still looks at v1: the v1 approval is stale.
    revised = await store.transition(task.id, TaskStatus.REVISING, actor="api:lead", reason="add a test")
    await post_plan(store, revised, a_plan(root_cause="parse_date() drops the zone and to_utc() assumes UTC"))
    line = flash_after(client, act(client, task.key, "approve", csrf, plan_version=1))
    assert line == f"approve refused: this approves plan v1, but {task.key} now has plan v2"
    assert (await store.get_task(task.key)).status == TaskStatus.AWAITING_APPROVAL
    line = flash_after(client, act(client, task.key, "approve", csrf, plan_version=2))
    assert line == f"{task.key} is now APPROVED (approved by lead)."
    approved = [e for e in await events_of(store, task.key) if e.to_status == TaskStatus.APPROVED]
    assert [(e.actor, e.data.get("plan_version")) for e in approved] == [("api:lead", 2)]


async def test_steering_from_the_console(console: str, store: Store) -> None:
    task = await planned_task(store)
    client, csrf = signed_in(console, APPROVE)
    steps = [
        ("pause", {"reason": "release freeze"}, TaskStatus.PAUSED, "is PAUSED (was AWAITING_APPROVAL)"),
        ("resume", {}, TaskStatus.AWAITING_APPROVAL, "is AWAITING_APPROVAL again"),
        ("priority", {"level": "high"}, TaskStatus.AWAITING_APPROVAL, "is now high priority (was normal)"),
        ("assign", {"user": "@octocat"}, TaskStatus.AWAITING_APPROVAL, "@octocat now owns"),
        ("revise", {"feedback": "also cover parse_time()"}, TaskStatus.REVISING, "is now REVISING"),
        ("cancel", {"reason": "duplicate"}, TaskStatus.CANCELLED, "is CANCELLED"),
    ]
    for command, fields, status, said in steps:
        line = flash_after(client, act(client, task.key, command, csrf, **fields))
        assert said in line, (command, line)
        assert (await store.get_task(task.key)).status == status, command
    actors = {(e.actor, e.reason) for e in await events_of(store, task.key)}
    assert ("api:lead", "release freeze") in actors and ("api:lead", "assigned to octocat") in actors
    updated = await store.get_task(task.key)
    assert (updated.priority, updated.owner) == ("high", "octocat")


async def test_bad_form_input_is_answered_with_its_reason(console: str, store: Store) -> None:
    task = await planned_task(store)
    client, csrf = signed_in(console, APPROVE)
    assert flash_after(client, act(client, task.key, "priority", csrf, level="urgent")) == \
        "priority: level: Input should be 'critical', 'high', 'normal' or 'low'"
    assert flash_after(client, act(client, task.key, "assign", csrf, user="bad user!")).startswith("assign: user: String should match")
    assert flash_after(client, act(client, task.key, "revise", csrf)) == "revise: feedback: Field required"
    assert act(client, task.key, "self-destruct", csrf).status_code == 404
    assert act(client, "FF-999", "pause", csrf).status_code == 404
    assert (await store.get_task(task.key)).status == TaskStatus.AWAITING_APPROVAL


# --- the pages ----------------------------------------------------------------------------------


async def test_the_list_filters_and_pages(console: str, store: Store) -> None:
    for n in range(55):
        await new_task(store, f"task number {n}", repo="https://github.com/acme/web.git" if n % 5 == 0 else
                       "https://github.com/acme/api.git", source=Source.SENTRY if n % 2 else Source.JIRA,
                       priority="high" if n % 11 == 0 else "normal")
    odd = await new_task(store, "100% broken_thing")
    await store.transition(odd.id, TaskStatus.PLANNING, actor="planner-1")
    client, _ = signed_in(console, READ)

    def keys(query: str = "") -> list[str]:
        return re.findall(r'<tr data-key="(FF-\d+)"', client.get(f"/ui/?{query}").text)

    first = keys()
    assert len(first) == 50 and first[0] == odd.key  # newest first, 50 a page
    assert 'rel="next"' in client.get("/ui/").text
    assert len(keys("offset=50")) == 6 and not set(keys("offset=50")) & set(first)
    assert keys("status=PLANNING") == [odd.key]
    assert len(keys("repo=https://github.com/acme/web.git")) == 11
    assert len(keys("source=sentry")) == 27 and len(keys("priority=high")) == 5
    assert keys("q=100%25 broken_") == [odd.key] and keys("q=%25") == [odd.key]  # % and _ are literal
    assert keys(f"q={odd.key.lower()}") == [odd.key]
    assert len(keys("q=number 1")) == 11  # 1, 10..19
    assert keys("source=sentry&priority=high") == ["FF-34", "FF-12"]  # n = 33 and 11
    assert keys("source=sentry&priority=high&repo=https://github.com/acme/web.git") == []
    bad = client.get("/ui/?status=SLEEPING")
    assert bad.status_code == 422 and "status" in bad.text


async def test_the_list_follows_a_task_as_it_moves(console: str, store: Store) -> None:
    task = await new_task(store)
    client, _ = signed_in(console, READ)
    page = client.get("/ui/").text
    poll = re.search(r'hx-get="(/ui/tasks/rows\?[^"]+)"', page)[1].replace("&amp;", "&")
    assert client.get(poll).status_code == 204  # nothing changed: nothing redrawn
    await store.transition(task.id, TaskStatus.PLANNING, actor="planner-1")
    fresh = client.get(poll)
    assert fresh.status_code == 200 and "status-planning" in fresh.text and 'id="task-rows"' in fresh.text


async def test_the_task_page_shows_plans_evidence_change_sessions_and_timeline(console: str, store: Store, redis: Redis,
                                                                              settings: Settings) -> None:
    task = await planned_task(store)
    revised = await store.transition(task.id, TaskStatus.REVISING, actor="api:lead", reason="cover parse_time() too",
                                     data={"feedback": "cover parse_time() too"})
    task = await post_plan(store, revised, a_plan(steps=["keep tzinfo in parse_date()", "also in parse_time()"]))
    await store.update_fields(task.id, context={"evidence": an_evidence(), "diff": A_DIFF})
    session = await recorded(store, redis, settings.home, task, opening_messages(task) + closing_messages())
    client, _ = signed_in(console, READ)
    page = client.get(f"/ui/tasks/{task.key}").text
    assert "Plan version: <strong>v2</strong>" in page and "also in parse_time()" in page
    assert "What changed in v2" in page and '<span class="d-add">+2. also in parse_time()</span>' in page
    assert "Plan v1 as posted" in page
    assert "tests/test_dates.py::test_keeps_zone" in page and "212 passed" in page and "exit 1" in page
    assert '<span class="d-add">+    return datetime.strptime(text, FMT).replace(tzinfo=UTC)</span>' in page
    assert f'href="/ui/tasks/{task.key}/sessions/{session.id}"' in page and "$0.0123" in page and "1.5k" in page
    assert "cover parse_time() too" in page and "plan v2 ready" in page  # the timeline: who, what, why
    assert 'href="https://github.com/acme/api/pull/7"' in page


async def test_a_transcript_page_and_its_live_tail(console: str, store: Store, redis: Redis, settings: Settings) -> None:
    task = await planned_task(store)
    session = await Recording(store, redis, settings.home, task).start(opening_messages(task))
    client, _ = signed_in(console, READ)
    task_page = client.get(f"/ui/tasks/{task.key}").text
    assert '<span class="badge running">running</span>' in task_page
    page = client.get(f"/ui/tasks/{task.key}/sessions/{session.id}")
    assert page.status_code == 200
    text = page.text
    assert 'id="session-state" class="badge running"' in text
    assert "Tool call: <code>Read</code>" in text and "/workspace/api/dates.py" in text  # a short call: on the page
    assert "def parse_date(text):" not in text  # a long result: fetched when its fold is opened
    fold = re.search(r'hx-get="(/ui/tasks/[^"]+/blocks/4/0)" hx-trigger="toggle once"', text)[1]
    assert client.get(fold, headers={"HX-Request": "true"}).text.startswith("def parse_date(text):")
    alone = client.get(fold).text  # without htmx: a page of its own
    assert "<h1>" in alone and "keeps line 19" in alone
    assert client.get(fold.replace("/4/0", "/4/7")).status_code == 404
    assert f"I will read `api/dates.py` to find why {task.key} fails." in text  # the model's words as it wrote them
    assert text.count('class="msg msg-') == 4
    poll = re.search(r'hx-get="(/ui/tasks/[^"]+/more\?after=4)"', text)[1]
    assert client.get(poll).status_code == 204  # nothing new yet
    await session.write(closing_messages())
    more = client.get(poll).text
    assert 'id="m5"' in more and 'id="m6"' in more and "success" in more.split('id="m6"')[1]
    assert "more?after=6" in more  # still running: it polls on
    await session.end()
    ended = client.get(f"/ui/tasks/{task.key}/sessions/{session.id}/more?after=6").text
    assert '<div id="session-head" hx-swap-oob="true">' in ended and 'class="badge ended">success<' in ended
    assert "$0.0123" in ended and "more?after" not in ended  # the head is drawn again, the polling stops
    chat_link = client.get(f"/ui/tasks/{task.key}?session={session.id}")  # as `logs` answers link it
    assert chat_link.status_code == 303 and chat_link.headers["location"] == f"/ui/tasks/{task.key}/sessions/{session.id}"
    assert client.get(f"/ui/tasks/{task.key}/sessions/../../etc/passwd").status_code == 404
    assert client.get(f"/ui/tasks/{task.key}/sessions/not-a-session-of-this-task").status_code == 404


async def test_the_pool_page(console: str, store: Store, redis: Redis) -> None:
    task = await planned_task(store)
    await beat(redis, task, agent="executor-aa11", role="executor", since=time.time() - 125)
    await beat(redis, None, agent="planner-bb22", role="planner")
    await redis.lpush(SCALE_DECISIONS_KEY, json.dumps({"queue": "execution", "current": 2, "replicas": 4, "depth": 7,
                                                        "reason": "queue", "at": time.time()}))
    client, _ = signed_in(console, READ)
    page = client.get("/ui/pool").text
    assert "executor-aa11" in page and f'<a href="/ui/tasks/{task.key}">{task.key}</a>' in page and "2m" in page
    assert "planner-bb22" in page and "1 idle" in page and "2 → 4" in page
    assert 'href="http://127.0.0.1:8265"' in page  # the Ray dashboard
    assert "execution" in page and "planning" in page  # the queues
    live = client.get("/ui/pool/live")
    assert live.status_code == 200 and 'id="pool-live"' in live.text


# --- the pieces ---------------------------------------------------------------------------------


def test_markdown_keeps_no_markup_of_its_writer() -> None:
    html = str(markdown("<script>alert(1)</script>\n\n[x](javascript:alert(1)) [y](JaVaScRiPt:alert(1)) "
                        "[z](data:text/html,<b>) ![i](https://tracker.example/p.png) [ok](https://example.com/a) "
                        "<img src=x onerror=alert(1)>"))
    assert "<script" not in html and "<img" not in html and "onerror=alert(1)>" not in html
    assert "href=\"javascript" not in html.lower() and "href=\"data" not in html
    assert '<a href="https://example.com/a" rel="noopener noreferrer nofollow">ok</a>' in html
    assert [safe_href(u) for u in ("https://a.example/x", "http://b.example", "javascript:x", "//c.example", "/ui/x",
                                   "https://d.example/\nx", None)] == \
        ["https://a.example/x", "http://b.example", None, None, None, None, None]


async def test_recorded_sessions_are_read_from_the_store(store: Store, redis: Redis, tmp_path: Path) -> None:
    task = await planned_task(store)
    reader = RecordedSessions(store)
    assert await reader.sessions_of(task.id) == []
    recording = await Recording(store, redis, tmp_path, task).start(opening_messages(task))
    [running] = await reader.sessions_of(task.id)
    assert running.running and running.id == recording.id and running.role == "planner" and running.agent == PLANNER
    page = await reader.messages(recording.id, after=1, limit=2)
    assert [m.seq for m in page] == [2, 3]
    await recording.end(closing_messages())
    [ended] = await reader.sessions_of(task.id)
    assert not ended.running and (ended.outcome, ended.cost_usd, ended.tokens, ended.turns) == ("success", 0.0123, 1500, 3)
    assert [m.kind for m in await reader.messages(recording.id)][-1] == "result"
    assert await reader.messages("../../etc/passwd") == [] and await reader.messages("9" * 30) == []


def test_every_action_the_pages_offer_has_a_form() -> None:
    from serve_app.console.actions import FORMS
    from serve_app.console.views import ACTIONS

    assert [a.name for a in ACTIONS] and set(FORMS) == {a.name for a in ACTIONS}


async def test_explain_with_a_question_is_asked_with_the_submit_scope(console: str, store: Store) -> None:
    task = await planned_task(store)
    reader, csrf = signed_in(console, READ)
    assert "/do/explain" not in reader.get(f"/ui/tasks/{task.key}").text
    assert "lacks the submit scope" in flash_after(reader, act(reader, task.key, "explain", csrf, question="why?"))
    asker, csrf = signed_in(console, SUBMIT)
    line = flash_after(asker, act(asker, task.key, "explain", csrf, question="why not fix the caller?"))
    assert "The planner is reading the code to answer it" in line
    assert (await store.get_task(task.key)).context.get("answer_asked_at")
