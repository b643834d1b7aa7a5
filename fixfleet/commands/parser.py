"""Find commands to the agents in free text: GitHub comments, Slack messages and slash commands.

A command is a mention (`@agent`, `@fixfleet`, or `/fixfleet` at the start of a line) followed by
a command word and its arguments, up to the end of the line. One command per line, any number
of lines. Text people did not mean as a command is skipped: fenced code blocks, inline code,
quoted replies (`> …`), HTML comments (PR templates) and e-mail addresses.
"""

from __future__ import annotations

import difflib
import functools
import re
from collections.abc import Iterator
from typing import Any

from pydantic import BaseModel, ConfigDict

from fixfleet.approvals import Scope
from fixfleet.commands.loader import ArgKind, ArgSpec, CommandSpec, default_commands
from fixfleet.models import Priority

DEFAULT_MENTIONS = ("agent", "fixfleet")
HELP_MENTION = "@agent"  # the form shown in replies and in `help`
SUGGEST_CUTOFF = 0.6  # difflib ratio for "did you mean"
# A mention mid-sentence ("I asked @agent about it") is usually prose, not a command: there an
# unknown word is only taken as a command when it is close to a real one (a typo).
MID_LINE_CUTOFF = 0.8

TASK_KEY = re.compile(r"FF-(\d+)", re.IGNORECASE)
LOGIN = re.compile(r"@?([A-Za-z0-9](?:[A-Za-z0-9-]{0,38}))")  # GitHub's login rules
PLAN_VERSION = re.compile(r"v?(\d+)", re.IGNORECASE)
PUNCTUATION = ".,;:!?*_()\"'`"  # around a word in prose: `approve.`, `**approve**`, `(FF-12)`

HTML_COMMENT = re.compile(r"<!--.*?-->", re.DOTALL)
FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")
INLINE_CODE = re.compile(r"(`+)(?!`).*?(?<!`)\1(?!`)")


class ParsedCommand(BaseModel):
    """One command found in the text; `spec` is None when the word is not a command."""

    model_config = ConfigDict(frozen=True)

    spec: CommandSpec | None
    name: str  # the command word as typed (`LGTM`)
    args: dict[str, Any] = {}
    task_key: str | None = None  # normalised: `FF-12`
    raw: str  # the line it came from
    error: str | None = None  # a missing or invalid argument, fit to show the person
    suggestions: tuple[str, ...] = ()  # for an unknown word: the closest names and aliases

    @property
    def ok(self) -> bool:
        return self.spec is not None and self.error is None

    @property
    def command(self) -> str | None:
        """The canonical name (`approve` for `lgtm`), None when unknown."""
        return self.spec.name if self.spec else None


def parse_commands(text: str, *, mentions: tuple[str, ...] = DEFAULT_MENTIONS) -> list[ParsedCommand]:
    """Every command addressed to one of `mentions` in `text`, in order, one per line at most."""
    pattern = _mention_pattern(tuple(name.lower() for name in mentions))
    found = (_parse_line(raw, visible, pattern) for raw, visible in _visible_lines(text))
    return [parsed for parsed in found if parsed is not None]


def parse_invocation(words: str, *, raw: str | None = None) -> ParsedCommand:
    """A command without its mention, e.g. the text of a Slack `/fixfleet` slash command.

    Empty text means `help`, as Slack users expect from a bare slash command; a bare task key
    (`/fixfleet FF-12`) means its `status`.
    """
    raw = (raw if raw is not None else words).strip()
    leading_key, words = _take_task_key(words)  # `/fixfleet FF-12 status` reads naturally too
    word, rest = _split_word(words.strip() or ("status" if leading_key else "help"))
    typed = word.strip(PUNCTUATION)
    spec = default_commands().get(typed)
    if spec is None:
        return ParsedCommand(spec=None, name=typed, raw=raw, task_key=leading_key, suggestions=suggest(typed))
    args, task_key, error = _bind_args(spec, rest if leading_key is None else f"{leading_key} {rest}")
    return ParsedCommand(spec=spec, name=typed, args=args, task_key=task_key, raw=raw, error=error)


def suggest(word: str, *, cutoff: float = SUGGEST_CUTOFF, limit: int = 3) -> tuple[str, ...]:
    """The known names and aliases closest to `word`, best first, one word per command."""
    commands = default_commands()
    close = difflib.get_close_matches(word.lower(), commands.words, n=len(commands.words), cutoff=cutoff)
    best_per_command: dict[str, str] = {}
    for candidate in close:  # `approve` and its alias `approved` are one suggestion, not two
        best_per_command.setdefault(commands[candidate].name, candidate)
    return tuple(best_per_command.values())[:limit]


def unknown_reply(parsed: ParsedCommand, *, mention: str = HELP_MENTION) -> str:
    """The answer to an unknown command: what was not understood and the closest known words."""
    if parsed.spec is not None:
        raise ValueError(f"`{parsed.name}` is a known command")
    reply = f"I don't know `{parsed.name}`."
    if parsed.suggestions:
        reply += f" Did you mean {_either(parsed.suggestions)}?"
    return f"{reply} Say `{mention} help` for the list."


def help_text(command: str | None = None, *, mention: str = HELP_MENTION) -> str:
    """Markdown help generated from definitions.yaml: every command, or one in detail."""
    if command is None:
        return _overview(mention)
    spec = default_commands().get(command)
    if spec is None:
        return unknown_reply(ParsedCommand(spec=None, name=command, raw=command, suggestions=suggest(command)))
    return _detail(spec, mention)


# --- finding the lines to read ------------------------------------------------------------------


def _visible_lines(text: str) -> Iterator[tuple[str, str]]:
    """(original line, line with inline code blanked) for every line a person meant as prose."""
    # Blank comments but keep their newlines, so line boundaries stay where they were.
    text = HTML_COMMENT.sub(lambda match: "\n" * match.group().count("\n"), text)
    fence: str | None = None
    for line in text.splitlines():
        marker = FENCE.match(line)
        if fence is not None:
            if marker and _closes(fence, marker.group(1), line):
                fence = None
            continue
        if marker:
            fence = marker.group(1)
            continue
        if line.lstrip().startswith(">"):
            continue
        # Same-length blanks keep offsets aligned, so arguments can be read from the original.
        yield line, INLINE_CODE.sub(lambda match: " " * len(match.group()), line)


def _closes(opening: str, candidate: str, line: str) -> bool:
    # CommonMark: the same character, at least as long, and nothing after it.
    return candidate[0] == opening[0] and len(candidate) >= len(opening) and line.strip() == candidate


@functools.cache
def _mention_pattern(mentions: tuple[str, ...]) -> re.Pattern[str]:
    names = "|".join(re.escape(name) for name in mentions)
    # Not after a word character, `.` or `@`: `me@agent.com` and `x.@agent` are not mentions.
    # Not followed by a word character or `-`: `@agents`, `@agent-bot` are someone else.
    # An optional `>` closes a Slack user mention (`<@U024BE7LH> approve`).
    # A slash command only counts at the start of a line, so paths like `src/fixfleet` don't.
    return re.compile(
        rf"(?:(?<![\w.@/+-])@(?:{names})|^\s*/(?:{names}))(?![\w-])>?[:,]?[ \t]+(?P<rest>\S.*)",
        re.IGNORECASE,
    )


def _parse_line(raw: str, visible: str, pattern: re.Pattern[str]) -> ParsedCommand | None:
    for match in pattern.finditer(visible):
        # The match is found in the visible line, the words are read from the original one:
        # `@agent revise use `strip()` here` keeps its inline code in the feedback.
        parsed = parse_invocation(raw[match.start("rest") :], raw=raw)
        at_line_start = not visible[: match.start()].strip()
        if parsed.spec is not None or at_line_start or suggest(parsed.name, cutoff=MID_LINE_CUTOFF):
            return parsed
    return None


# --- binding arguments --------------------------------------------------------------------------


def _bind_args(spec: CommandSpec, rest: str) -> tuple[dict[str, Any], str | None, str | None]:
    """(args, task key, error) for the words after the command name."""
    task_key, rest = _take_task_key(rest)
    args: dict[str, Any] = {}
    for arg in spec.args:
        if arg.kind is ArgKind.TEXT:
            value, rest = rest.strip(), ""
        else:
            word, rest = _split_word(rest)
            value = word.strip(PUNCTUATION)
        if not value:
            if arg.required:
                return args, task_key, _with_usage(f"`{spec.name}` needs {arg.name}: {arg.help}.", spec)
            continue
        converted, problem = _convert(arg, value)
        if problem and not arg.required and rest.strip():
            # An optional argument that does not fit, followed by more words, is most likely
            # prose (`approve not yet`): say so instead of lecturing about plan versions.
            return args, task_key, _unexpected(spec, f"{word} {rest}")
        if problem:
            return args, task_key, _with_usage(problem, spec)
        args[arg.name] = converted
    return _bind_leftover(spec, args, task_key, rest)


def _bind_leftover(
    spec: CommandSpec, args: dict[str, Any], task_key: str | None, rest: str
) -> tuple[dict[str, Any], str | None, str | None]:
    # A task key may also come last (`@agent priority high FF-12`). Anything else is refused
    # rather than ignored: `@agent approve not yet` must not approve.
    if task_key is None:
        task_key, rest = _take_task_key(rest)
    if rest.strip():
        return args, task_key, _unexpected(spec, rest)
    return args, task_key, None


def _unexpected(spec: CommandSpec, rest: str) -> str:
    return _with_usage(f"I did not expect `{rest.strip()}` after `{spec.name}`.", spec)


def _take_task_key(rest: str) -> tuple[str | None, str]:
    word, after = _split_word(rest)
    match = TASK_KEY.fullmatch(word.strip(PUNCTUATION))
    if match is None:
        return None, rest
    return f"FF-{int(match.group(1))}", after


def _convert(arg: ArgSpec, value: str) -> tuple[Any, str | None]:
    """(typed value, None) or (None, why the value is refused)."""
    match arg.kind:
        case ArgKind.TEXT:
            return value, None
        case ArgKind.PRIORITY:
            allowed = [level.value for level in Priority]
            if value.lower() in allowed:
                return Priority(value.lower()), None
            return None, f"`{value}` is not a priority: use one of {', '.join(allowed)}."
        case ArgKind.NUMBER:
            if value.isdigit() and int(value) > 0:
                return int(value), None
            return None, f"`{value}` is not a valid {arg.name}: give a whole number above 0."
        case ArgKind.PLAN_VERSION:
            match_ = PLAN_VERSION.fullmatch(value)
            if match_:
                return int(match_.group(1)), None
            return None, f"`{value}` is not a plan version: write it as `v3`."
        case ArgKind.USER:
            match_ = LOGIN.fullmatch(value)
            if match_:
                return match_.group(1), None
            return None, f"`{value}` is not a user name: give a GitHub login such as `@octocat`."
        case ArgKind.COMMAND:
            spec = default_commands().get(value)
            if spec:
                return spec.name, None
            hint = suggest(value)
            return None, f"I don't know `{value}`." + (f" Did you mean {_either(hint)}?" if hint else "")
    raise AssertionError(f"unhandled argument kind {arg.kind}")  # the loader admits no other kind


def _with_usage(problem: str, spec: CommandSpec) -> str:
    return f"{problem} Usage: `{spec.usage(HELP_MENTION)}`, e.g. `{spec.example}`."


def _split_word(text: str) -> tuple[str, str]:
    parts = text.strip().split(maxsplit=1)
    return (parts[0], parts[1]) if len(parts) == 2 else (parts[0] if parts else "", "")


def _either(words: tuple[str, ...]) -> str:
    quoted = [f"`{word}`" for word in words]
    return quoted[0] if len(quoted) == 1 else f"{', '.join(quoted[:-1])} or {quoted[-1]}"


# --- help ---------------------------------------------------------------------------------------

SCOPE_TITLES = {
    Scope.APPROVE: "Decide on a plan (approvers only)",
    Scope.SUBMIT: "Steer a task",
    Scope.READ: "Look",
}
SCOPE_WHO = {
    Scope.APPROVE: "approvers: write, maintain or admin on the repository, Slack approvers, "
    "API tokens with the `approve` scope",
    Scope.SUBMIT: "anyone who may submit tasks (API scope `submit`)",
    Scope.READ: "anyone who can see the task (API scope `read`)",
}


def _overview(mention: str) -> str:
    lines = [
        "### fixfleet commands",
        "",
        f"Write `{mention}` (or `@fixfleet`, or `/fixfleet` in Slack) and a command, one per line. "
        "Any command takes a task key right after its name (`FF-12`); on a pull request or issue "
        "fixfleet opened, the task is implied.",
    ]
    for scope, title in SCOPE_TITLES.items():
        lines += ["", f"**{title}**", "", "| Command | Aliases | What it does |", "|---|---|---|"]
        lines += [_row(spec) for spec in default_commands() if spec.scope == scope]
    lines += ["", f"`{mention} help <command>` explains one command."]
    return "\n".join(lines)


def _row(spec: CommandSpec) -> str:
    usage = " ".join([spec.name, *(arg.usage for arg in spec.args)])
    aliases = ", ".join(f"`{alias}`" for alias in spec.aliases) or "-"
    return f"| `{usage}` | {aliases} | {spec.help} |"


def _detail(spec: CommandSpec, mention: str) -> str:
    lines = [f"### `{spec.name}`", "", spec.help, "", f"Usage: `{spec.usage(mention)}`"]
    if spec.aliases:
        lines.append("Aliases: " + ", ".join(f"`{alias}`" for alias in spec.aliases))
    lines.append(f"Who may run it: {SCOPE_WHO[spec.scope]}")
    if spec.args:
        lines += ["", "Arguments:"]
        lines += [f"- `{arg.name}` ({_arg_nature(arg)}): {arg.help}" for arg in spec.args]
    lines += ["", f"Example: `{spec.example}`"]
    return "\n".join(lines)


def _arg_nature(arg: ArgSpec) -> str:
    kind = "rest of the line" if arg.kind is ArgKind.TEXT else arg.kind.value.replace("_", " ")
    return f"{'required' if arg.required else 'optional'}, {kind}"
