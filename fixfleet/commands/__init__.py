"""The command language: what people say to the agents (`@agent approve`, `/fixfleet status FF-12`).

definitions.yaml defines the commands; `loader` turns it into typed specs, `parser` finds and
reads commands in comments and messages and generates `help` from the same definitions.
"""

from fixfleet.commands.loader import (
    ArgKind,
    ArgSpec,
    CommandDefinitionError,
    CommandSet,
    CommandSpec,
    Scope,
    default_commands,
    load_commands,
    parse_definitions,
)
from fixfleet.commands.parser import (
    ParsedCommand,
    help_text,
    parse_commands,
    parse_invocation,
    suggest,
    unknown_reply,
)

__all__ = [
    "ArgKind",
    "ArgSpec",
    "CommandDefinitionError",
    "CommandSet",
    "CommandSpec",
    "ParsedCommand",
    "Scope",
    "default_commands",
    "help_text",
    "load_commands",
    "parse_commands",
    "parse_definitions",
    "parse_invocation",
    "suggest",
    "unknown_reply",
]
