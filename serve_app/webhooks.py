"""Webhook routes: verify the signature, parse to a typed event, persist (with its outbox row), answer.

Nothing else happens here: planning and execution run in the agents. A redelivery (same
source and delivery id) answers 200 with the task it made the first time.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs

from fastapi import (
    APIRouter,
    BackgroundTasks,
    Depends,
    HTTPException,
    Request,
    Response,
)
from fastapi.responses import JSONResponse

from fixfleet.config import Settings
from fixfleet.intake import (
    CommandRequest,
    Ignored,
    ParseError,
    Ping,
    SlackAction,
    TaskRequest,
    UrlVerification,
    delivery_id,
    parse_github,
    parse_jira,
    parse_sentry,
    parse_slack_command,
    parse_slack_event,
    parse_slack_interaction,
)
from fixfleet.repos import InvalidRepo, validate_repo
from fixfleet.store import Delivery, Outcome
from serve_app.commands import ChatCommands
from serve_app.context import AppContext, get_ctx
from serve_app.schemas import ErrorOut, WebhookOut
from fixfleet.intake.signatures import (
    SignatureError,
    verify_github,
    verify_jira,
    verify_sentry,
    verify_slack,
)

router = APIRouter(prefix="/webhooks", tags=["webhooks"])
ERRORS = {code: {"model": ErrorOut} for code in (400, 401, 413, 415, 422)}
JSON, FORM = "application/json", "application/x-www-form-urlencoded"


async def read_body(request: Request, ctx: AppContext, content_type: str) -> bytes:
    """The raw body, checked for size and type before anything reads it."""
    limit = ctx.settings.max_body_bytes
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise HTTPException(413, f"body over {limit} bytes")
    body = await request.body()
    if len(body) > limit:
        raise HTTPException(413, f"body over {limit} bytes")
    if request.headers.get("content-type", "").split(";")[0].strip().lower() != content_type:
        raise HTTPException(415, f"content type must be {content_type}")
    return body


def check_source_address(request: Request, allowed: list[str]) -> None:
    """With an allowlist (Atlassian publishes its egress ranges), other senders get 403."""
    if not allowed:
        return
    client = request.client.host if request.client else ""
    try:
        address = ipaddress.ip_address(client)
    except ValueError:
        raise HTTPException(403, "sender address unknown; FIXFLEET_JIRA_IP_ALLOWLIST is set") from None
    if not any(address in ipaddress.ip_network(net, strict=False) for net in allowed):
        raise HTTPException(403, f"{client} is not in FIXFLEET_JIRA_IP_ALLOWLIST")


def verified(verify: Callable[[], None]) -> None:
    try:
        verify()
    except SignatureError as exc:
        raise HTTPException(401, exc.reason) from exc


MAX_DEPTH = 64  # no provider nests deeper; a deeper body only exists to exhaust the parser's stack


def json_object(body: bytes) -> dict[str, Any]:
    try:
        payload = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise HTTPException(400, f"malformed JSON: {exc}") from exc
    except RecursionError:
        raise HTTPException(400, f"the JSON body nests deeper than {MAX_DEPTH} levels") from None
    if not isinstance(payload, dict):
        raise HTTPException(400, "the JSON body must be an object")
    if nesting(payload) > MAX_DEPTH:
        raise HTTPException(400, f"the JSON body nests deeper than {MAX_DEPTH} levels")
    return payload


def nesting(value: Any) -> int:
    """How deep objects and arrays nest (iterative: the check must not recurse itself)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict | list):
            deepest = max(deepest, depth)
            stack.extend((child, depth + 1) for child in (node.values() if isinstance(node, dict) else node))
    return deepest


@router.post("/github", response_model=WebhookOut, responses=ERRORS)
async def github(request: Request, response: Response, background: BackgroundTasks, ctx: AppContext = Depends(get_ctx)) -> WebhookOut:
    body = await read_body(request, ctx, JSON)
    verified(lambda: verify_github(Settings.secret_values(ctx.settings.github_webhook_secret), body, request.headers.get("x-hub-signature-256")))
    payload = json_object(body)
    event = request.headers.get("x-github-event", "")
    delivery = Delivery("github", delivery_id("github", request.headers, payload))
    return await route_event(ctx, response, background, delivery, lambda: parse_github(event, payload, ctx.settings))


@router.post("/sentry", response_model=WebhookOut, responses=ERRORS)
async def sentry(request: Request, response: Response, background: BackgroundTasks, ctx: AppContext = Depends(get_ctx)) -> WebhookOut:
    body = await read_body(request, ctx, JSON)
    verified(lambda: verify_sentry(Settings.secret_values(ctx.settings.sentry_client_secret), body, request.headers.get("sentry-hook-signature")))
    payload = json_object(body)
    resource = request.headers.get("sentry-hook-resource", "")
    delivery = Delivery("sentry", delivery_id("sentry", request.headers, payload))
    return await route_event(ctx, response, background, delivery, lambda: parse_sentry(resource, payload, ctx.settings))


@router.post("/jira", response_model=WebhookOut, responses=ERRORS)
async def jira(request: Request, response: Response, background: BackgroundTasks, ctx: AppContext = Depends(get_ctx)) -> WebhookOut:
    check_source_address(request, ctx.settings.jira_ip_allowlist)
    body = await read_body(request, ctx, JSON)
    if ctx.settings.jira_webhook_secret is not None:
        verified(lambda: verify_jira(Settings.secret_values(ctx.settings.jira_webhook_secret), body, request.headers.get("x-hub-signature")))
    elif not ctx.settings.jira_allow_unsigned:
        raise HTTPException(401, "unsigned Jira webhooks are refused: set FIXFLEET_JIRA_WEBHOOK_SECRET (and the same "
                                 "secret on the Jira webhook), or FIXFLEET_JIRA_ALLOW_UNSIGNED=true to accept them")
    payload = json_object(body)
    delivery = Delivery("jira", delivery_id("jira", request.headers, payload))
    return await route_event(ctx, response, background, delivery, lambda: parse_jira(payload, ctx.settings))


async def slack_body(request: Request, ctx: AppContext, content_type: str) -> bytes:
    """A Slack request's body, checked against the signing secret (the same check for every route)."""
    body = await read_body(request, ctx, content_type)
    verified(lambda: verify_slack(Settings.secret_values(ctx.settings.slack_signing_secret), body,
                                  request.headers.get("x-slack-request-timestamp"),
                                  request.headers.get("x-slack-signature")))
    return body


async def slack_form(request: Request, ctx: AppContext) -> tuple[dict[str, str], bytes]:
    body = await slack_body(request, ctx, FORM)
    form = {k: v[0] for k, v in parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True).items()}
    return form, body


@router.post("/slack/interactions", response_model=WebhookOut, responses=ERRORS)
async def slack_interactions(request: Request, response: Response, background: BackgroundTasks, ctx: AppContext = Depends(get_ctx)) -> WebhookOut:
    form, _ = await slack_form(request, ctx)
    if "payload" not in form:
        raise HTTPException(400, "a Slack interaction carries a payload field")
    payload = json_object(form["payload"].encode())
    delivery = Delivery("slack", delivery_id("slack", request.headers, payload))
    return await route_event(ctx, response, background, delivery, lambda: parse_slack_interaction(payload))


@router.post("/slack/commands", response_model=WebhookOut, responses=ERRORS)
async def slack_commands(request: Request, response: Response, background: BackgroundTasks, ctx: AppContext = Depends(get_ctx)) -> WebhookOut:
    form, _ = await slack_form(request, ctx)
    delivery = Delivery("slack", delivery_id("slack", request.headers, form))
    return await route_event(ctx, response, background, delivery, lambda: parse_slack_command(form))


@router.post("/slack/events", response_model=WebhookOut, responses=ERRORS)
async def slack_events(request: Request, response: Response, background: BackgroundTasks, ctx: AppContext = Depends(get_ctx)) -> Any:
    """The Events API: messages and @-mentions of the app holding commands; url_verification."""
    payload = json_object(await slack_body(request, ctx, JSON))
    delivery = Delivery("slack", delivery_id("slack", request.headers, payload))
    return await route_event(ctx, response, background, delivery, lambda: parse_slack_event(payload))


async def route_event(
    ctx: AppContext, response: Response, background: BackgroundTasks, delivery: Delivery, parse: Callable[[], Any]
) -> WebhookOut:
    try:
        event = parse()
    except ParseError as exc:
        raise HTTPException(422, str(exc)) from exc
    except RecursionError:
        raise HTTPException(400, f"the JSON body nests deeper than {MAX_DEPTH} levels") from None
    source = delivery.source
    if isinstance(event, UrlVerification):
        return JSONResponse({"challenge": event.challenge})
    if isinstance(event, Ping):
        ctx.metrics.count("webhooks", source, "pong")
        return WebhookOut(status="pong")
    if isinstance(event, Ignored):
        await ctx.services.store.record_delivery(delivery)
        ctx.metrics.count("webhooks", source, "ignored")
        return WebhookOut(status="ignored", detail=event.reason)
    if isinstance(event, TaskRequest):
        return await accept_task(ctx, response, delivery, event)
    if not await ctx.services.store.record_delivery(delivery):
        ctx.metrics.count("webhooks", source, "duplicate")
        return WebhookOut(status="duplicate")
    handler = ChatCommands(ctx)
    if isinstance(event, SlackAction):
        outcome = await handler.slack_action(event, background)
    else:
        assert isinstance(event, CommandRequest)
        outcome = await handler.comment(event, background)
    ctx.metrics.count("webhooks", source, "command")
    return outcome


async def accept_task(ctx: AppContext, response: Response, delivery: Delivery, event: TaskRequest) -> WebhookOut:
    """Store the task, once: a redelivery answers with the first task; an alert about something
    that already has an open task (the database allows only one) is counted on that task."""
    store = ctx.services.store
    source = delivery.source
    try:
        validate_repo(event.new_task.repo, ctx.settings)
    except InvalidRepo as exc:
        raise HTTPException(422, str(exc)) from exc
    task, outcome = await store.create_or_find(event.new_task, delivery=delivery, actor=f"webhook:{source}")
    status = {Outcome.CREATED: "created", Outcome.DUPLICATE: "duplicate", Outcome.EXISTING: "attached"}[outcome]
    if outcome is Outcome.EXISTING:
        context = event.new_task.context
        await store.attach_alert(task.id, actor=f"webhook:{source}",
                                 last_seen=context.get("last_seen") or context.get("timestamp"))
    ctx.metrics.count("webhooks", source, status)
    response.status_code = 202 if outcome is Outcome.CREATED else 200
    return WebhookOut(status=status, task=task.key)
