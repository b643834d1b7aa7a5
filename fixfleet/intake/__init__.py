"""From a webhook request to a typed event, per source: its signature (signatures.py), then its payload.

Every `parse_*` takes JSON that has already passed its signature check and returns one of
`TaskRequest`, `CommandRequest`, `SlackAction`, `Ignored` or `Ping`. Odd-but-valid JSON (missing
keys, nulls, unexpected types) never raises: it becomes `Ignored` with a reason worth logging.
Only a payload that is not even a JSON object raises `ParseError` (the app answers 400/422).
"""

from fixfleet.intake.delivery import delivery_id
from fixfleet.intake.events import (CommandRequest, Ignored, ParsedEvent, ParseError, Ping, SlackAction, TaskRequest,
                                    UrlVerification)
from fixfleet.intake.github import parse_github
from fixfleet.intake.jira import parse_jira
from fixfleet.intake.sentry import parse_sentry
from fixfleet.intake.slack import parse_slack_command, parse_slack_event, parse_slack_interaction

__all__ = ["CommandRequest", "Ignored", "ParseError", "ParsedEvent", "Ping", "SlackAction", "TaskRequest",
           "UrlVerification", "delivery_id", "parse_github", "parse_jira", "parse_sentry", "parse_slack_command",
           "parse_slack_event", "parse_slack_interaction"]
