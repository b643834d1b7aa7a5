"""The console in a real browser: Playwright driving Debian's chromium (no browser download).

The ingress runs on uvicorn in this process with the real store and Redis; the agents' side is
played by writing what they write (state changes, heartbeats, the runner's transcript lines).
Screenshots of the list, a task, a transcript and the pool go to artifacts/console/ (or
FIXFLEET_ARTIFACTS), printed at the end of each test, for a reviewer to look at.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from playwright.async_api import Browser, ConsoleMessage, Page, async_playwright, expect
from redis.asyncio import Redis

from fixfleet.config import Settings
from fixfleet.models import Source, TaskStatus
from fixfleet.services import SCALE_DECISIONS_KEY
from fixfleet.store import Store
from tests.console_world import (
    A_DIFF,
    APPROVE,
    READ,
    Recording,
    a_plan,
    an_evidence,
    beating,
    closing_messages,
    console_settings,
    new_task,
    opening_messages,
    planned_task,
    recorded,
)
from tests.ingress_server import running_ingress

CHROMIUM = Path(os.environ.get("FIXFLEET_CHROMIUM", "/usr/bin/chromium"))
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]
ARTIFACTS = Path(os.environ.get("FIXFLEET_ARTIFACTS") or Path(__file__).resolve().parents[1] / "artifacts") / "console"
LIVE_S = 20_000  # ms: the pages poll every 2-3 s; a loaded machine gets ample time, a broken page still fails


@pytest.fixture
def console(settings: Settings, store: Store, redis: Redis) -> Iterator[str]:
    with running_ingress(console_settings(settings)) as url:
        yield url


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    assert CHROMIUM.exists(), f"no browser at {CHROMIUM}: apt-get install -y chromium (.ci/run does), or set FIXFLEET_CHROMIUM"
    async with async_playwright() as driver:
        launched = await driver.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        try:
            yield launched
        finally:
            await launched.close()


class Watched:
    """A page with everything its scripts said: console lines, uncaught errors, dialogs, and the
    Content-Security-Policy violations the browser reported."""

    def __init__(self, page: Page) -> None:
        self.page, self.console, self.dialogs = page, [], []
        page.on("console", self._console)
        page.on("pageerror", lambda error: self.console.append(f"pageerror: {error}"))
        page.on("dialog", self._dialog)
        page.on("response", lambda r: r.status >= 400 and self.console.append(f"{r.status} {r.url}"))

    def _console(self, message: ConsoleMessage) -> None:
        if not message.text.startswith("Failed to load resource"):  # said with its URL by the response handler
            self.console.append(f"{message.type}: {message.text}")

    async def _dialog(self, dialog) -> None:  # noqa: ANN001 - playwright's Dialog
        self.dialogs.append(dialog.message)
        await dialog.dismiss()

    async def violations(self) -> list[str]:
        return await self.page.evaluate("window.__cspViolations || []")

    async def quiet(self) -> None:
        """Nothing ran that the console did not write itself: no output, no error, no dialog, no violation."""
        assert self.console == [] and self.dialogs == [] and await self.violations() == [], \
            (self.console, self.dialogs, await self.violations())


async def open_page(browser: Browser, base: str) -> Watched:
    context = await browser.new_context(base_url=base, viewport={"width": 1366, "height": 900})
    # Runs through the DevTools protocol before the page's own scripts (the page's CSP does not apply to it).
    await context.add_init_script("window.__cspViolations = []; document.addEventListener('securitypolicyviolation',"
                                  " e => window.__cspViolations.push(e.violatedDirective + ' ' + e.blockedURI));")
    return Watched(await context.new_page())


async def sign_in(watched: Watched, token: str) -> Page:
    page = watched.page
    await page.goto("/ui/")
    await expect(page).to_have_url(re.compile(r"/ui/login\?next=/ui/$"))
    await page.get_by_label("API token").fill(token)
    await page.get_by_role("button", name="Sign in").click()
    await expect(page.get_by_role("heading", name="Tasks", exact=True)).to_be_visible()
    return page


async def shot(page: Page, name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    await page.screenshot(path=str(path), full_page=True)
    print(f"screenshot: {path}")
    return path


def row_status(page: Page, key: str):
    return page.locator(f'tr[data-key="{key}"] .status')


async def test_sign_in_and_watch_the_list_follow_a_task(console: str, browser: Browser, store: Store) -> None:
    for title, source, priority in (("Checkout times out when the cart has 200 items", Source.JIRA, "high"),
                                    ("NullPointerException in ReportExporter.render", Source.SENTRY, "normal"),
                                    ("Docs: the retry example uses a removed flag", Source.GITHUB, "low")):
        await new_task(store, title, source=source, priority=priority)
    await store.add_cost(2, 0.4127, 61_000)
    waiting = await new_task(store, "KeyError: 'region' in billing.invoice")
    planned = await planned_task(store, source=Source.SENTRY, priority="critical")
    watched = await open_page(browser, console)
    page = await sign_in(watched, APPROVE)
    await expect(page.get_by_text("Signed in as")).to_contain_text("lead")
    await expect(row_status(page, waiting.key)).to_have_text("RECEIVED")
    await expect(row_status(page, planned.key)).to_have_text("AWAITING_APPROVAL")
    await store.transition(waiting.id, TaskStatus.PLANNING, actor="planner-7f3a", reason="planning")
    await expect(row_status(page, waiting.key)).to_have_text("PLANNING", timeout=LIVE_S)  # no reload: the list polls
    await page.get_by_label("Status").select_option("PLANNING")
    await page.get_by_role("button", name="Filter").click()
    await expect(page.locator("tbody tr")).to_have_count(1)
    await page.get_by_role("link", name="Clear").click()
    await shot(page, "list")
    await watched.quiet()


async def test_read_a_plan_and_a_live_transcript(
        console: str, browser: Browser, store: Store, redis: Redis, settings: Settings) -> None:
    task = await planned_task(store)
    session = await Recording(store, redis, settings.home, task).start(opening_messages(task))
    watched = await open_page(browser, console)
    page = await sign_in(watched, APPROVE)
    await page.get_by_role("link", name=task.key, exact=True).click()
    await expect(page.locator("#plan-current")).to_contain_text("parse_date() drops the timezone")
    await expect(page.locator(".sessions .badge.running")).to_have_text("running")

    await page.locator(f'.sessions a[href$="/sessions/{session.id}"]').click()
    await expect(page.locator("#session-state")).to_have_text("running")
    await expect(page.locator("#messages > li.msg")).to_have_count(4)
    tool_call = page.locator("details.block-tool_use").first
    await expect(tool_call.locator("pre")).to_be_hidden()  # folded until opened
    await tool_call.locator("summary").click()
    await expect(tool_call.locator("pre")).to_contain_text("/workspace/api/dates.py")
    result = page.locator("details.block-tool_result").first
    await result.locator("summary").click()  # a long result is fetched as it opens
    await expect(result.locator("pre")).to_contain_text("keeps line 19")
    await session.write(closing_messages())  # the agent writes on
    await expect(page.locator("#m6")).to_contain_text("success", timeout=LIVE_S)
    await expect(page.locator("#m5")).to_contain_text("the plan keeps it")
    await session.end()
    await expect(page.locator("#session-state")).to_have_text("success", timeout=LIVE_S)
    await expect(page.locator("#session-head")).to_contain_text("$0.0123")
    await shot(page, "transcript")
    await watched.quiet()


async def test_approve_and_see_the_task_move_on_then_the_pool(console: str, browser: Browser, store: Store,
                                                              redis: Redis, settings: Settings) -> None:
    task = await planned_task(store)
    watched = await open_page(browser, console)
    page = await sign_in(watched, APPROVE)
    await page.get_by_role("link", name=task.key, exact=True).click()
    await page.get_by_role("button", name=f"Approve plan v{task.plan_version}").click()
    await expect(page.get_by_role("status")).to_contain_text(f"{task.key} is now APPROVED (approved by lead)")
    await expect(page.locator("#task-status")).to_have_text("APPROVED")
    assert (await store.get_task(task.key)).status == TaskStatus.APPROVED
    await store.transition(task.id, TaskStatus.EXECUTING, actor="executor-aa11", reason="executing")
    await expect(page.locator("#task-status")).to_have_text("EXECUTING", timeout=LIVE_S)  # the page follows it
    await expect(page.locator("#timeline-h + ol li").first).to_contain_text("executor-aa11")
    # The executor proves its change and pushes it: the page shows the evidence, the change and its session.
    await recorded(store, redis, settings.home, task, opening_messages(task) + closing_messages(), agent="executor-aa11",
                   role="executor")
    await store.update_fields(task.id, context={"evidence": an_evidence(), "diff": A_DIFF})
    await store.transition(task.id, TaskStatus.COMPLETED, actor="executor-aa11", reason="fix pushed, PR ready",
                           data={"commits": ["4f2a9c1", "b81e0d3"]})
    await expect(page.locator("#task-status")).to_have_text("COMPLETED", timeout=LIVE_S)
    await expect(page.locator("#verified-diff")).to_contain_text("replace(tzinfo=UTC)")
    await expect(page.locator(".run-red summary")).to_contain_text("exit 1")
    await expect(page.locator(".sessions")).to_contain_text("executor")
    await shot(page, "task")

    async with beating(redis, task, agent="executor-aa11", role="executor", since=time.time() - 95), \
            beating(redis, None, agent="planner-7f3a"):
        await redis.lpush(SCALE_DECISIONS_KEY, json.dumps({"queue": "execution", "current": 2, "replicas": 3, "depth": 5,
                                                            "reason": "queue", "at": time.time()}))
        await page.get_by_role("link", name="Pool").click()
        await expect(page.get_by_role("cell", name="executor-aa11")).to_be_visible()
        await expect(page.locator("#scale-h + table")).to_contain_text("2 → 3")
        await expect(page.get_by_role("link", name="Open the Ray dashboard")).to_have_attribute("href", "http://127.0.0.1:8265")
        await shot(page, "pool")
    await watched.quiet()


async def test_read_only_sees_no_approve_and_forged_forms_are_refused(console: str, browser: Browser, store: Store) -> None:
    """Attack: a read-only user draws the Approve form by hand (with the session's own valid CSRF
    token); a signed-in approver is made to post a form without the CSRF token. Held: the handler
    refuses the first (audited, task unchanged), the second never reaches it."""
    task = await planned_task(store)
    watched = await open_page(browser, console)
    page = await sign_in(watched, READ)
    await page.goto(f"/ui/tasks/{task.key}")
    await expect(page.locator("#plan-current")).to_contain_text("parse_date()")
    await expect(page.get_by_role("button", name=re.compile("Approve"))).to_have_count(0)
    await expect(page.locator("#task-actions")).to_contain_text("your token reads only")
    drawn = """([key, version]) => {
        const form = document.createElement('form');
        form.method = 'post'; form.action = `/ui/tasks/${key}/do/approve`;
        const csrf = document.querySelector('input[name=csrf]').cloneNode();
        const plan = Object.assign(document.createElement('input'), {name: 'plan_version', value: version});
        const button = Object.assign(document.createElement('button'), {textContent: 'Approve (drawn by hand)'});
        form.append(csrf, plan, button); document.querySelector('main').append(form);
    }"""
    await page.evaluate(drawn, [task.key, str(task.plan_version)])
    await page.get_by_role("button", name="Approve (drawn by hand)").click()
    await expect(page.get_by_role("alert")).to_contain_text("approve refused: the token 'reader' lacks the approve scope")
    assert (await store.get_task(task.key)).status == TaskStatus.AWAITING_APPROVAL
    assert (await store.events(task.key))[-1].actor == "api:reader"

    approver = await open_page(browser, console)
    page = await sign_in(approver, APPROVE)
    await page.goto(f"/ui/tasks/{task.key}")
    before = len(await store.events(task.key))
    await page.evaluate("""() => { const f = document.querySelector('form.action-approve');
                                   f.querySelector('input[name=csrf]').remove(); f.submit(); }""")
    await expect(page.get_by_role("heading", name="403")).to_be_visible()
    await expect(page.locator(".error-message")).to_contain_text("no valid CSRF token")
    assert (await store.get_task(task.key)).status == TaskStatus.AWAITING_APPROVAL
    assert len(await store.events(task.key)) == before
    await watched.quiet()


HOSTILE = ("<script>console.log('pwned-script')</script><img src=x onerror=\"alert('pwned-img')\">"
           "<a href=\"javascript:alert('pwned-a')\">a</a>")
HOSTILE_MD = f"{HOSTILE}\n\n[click me](javascript:alert('pwned-md')) [data](data:text/html,<script>alert(1)</script>)"


async def test_hostile_content_runs_no_script(console: str, browser: Browser, store: Store, redis: Redis,
                                              settings: Settings) -> None:
    """Attack: the title, the issue body, the agent's plan, its transcript, its diff and the test
    output all carry <script>, <img onerror> and javascript: links; the list redraws the row while
    it is open. Held: every piece is shown as text, no link is javascript:, and the browser ran
    nothing: no console line, no dialog, no CSP violation (nothing even tried)."""
    task = await planned_task(store, title=f"Crash {HOSTILE}", body=HOSTILE_MD,
                              plan=a_plan(root_cause=f"the parser trusts input {HOSTILE_MD}", steps=[HOSTILE_MD]))
    await store.update_fields(task.id, context={"diff": f"+{HOSTILE}\n", "evidence": {
        "red": {"command": HOSTILE, "exit_code": 1, "seconds": 1, "output_tail": HOSTILE, "tests": {HOSTILE: "failed"}},
        "red_to_green": [HOSTILE]}})
    from claude_agent_sdk import (
        AssistantMessage,
        TextBlock,
        ToolResultBlock,
        UserMessage,
    )

    session = await recorded(store, redis, settings.home, task, [AssistantMessage(content=[TextBlock(HOSTILE_MD)], model="m"),
                                                                 UserMessage(content=[ToolResultBlock("t1", HOSTILE, False)])])
    watched = await open_page(browser, console)
    page = await sign_in(watched, APPROVE)
    await expect(page.locator(f'tr[data-key="{task.key}"] td.title')).to_contain_text("<script>console.log('pwned-script')")
    await store.transition(task.id, TaskStatus.REVISING, actor="api:lead", reason=HOSTILE)  # the row is swapped in live
    await expect(row_status(page, task.key)).to_have_text("REVISING", timeout=LIVE_S)
    await page.goto(f"/ui/tasks/{task.key}")
    await expect(page.locator("main h1")).to_contain_text("<img src=x onerror=")
    await expect(page.locator("#plan-current")).to_contain_text("[click me](javascript:alert('pwned-md'))")
    for details in await page.locator("details").all():
        await details.locator("summary").first.click()  # open everything: nothing hides a payload
    await expect(page.locator("#verified-diff")).to_contain_text("<script>")
    await page.goto(f"/ui/tasks/{task.key}/sessions/{session.id}")
    await expect(page.locator("#m1")).to_contain_text("<script>console.log('pwned-script')</script>")
    hrefs = await page.evaluate("[...document.querySelectorAll('a')].map(a => a.getAttribute('href'))")
    assert not [h for h in hrefs if not h.startswith(("/ui/", "http://", "https://", "#"))], hrefs
    assert await page.locator("img").count() == 0
    await page.wait_for_timeout(500)  # an onerror or a late script would have run by now
    await watched.quiet()
