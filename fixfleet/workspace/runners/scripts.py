"""Reading package.json test scripts: which JavaScript runner they start, with which options and
test paths, and matching files against a runner's globs (a pure function over names)."""

from __future__ import annotations

import re
import shlex
from collections.abc import Iterator
from dataclasses import dataclass

from fixfleet.workspace.runners.reports import JS_EXTENSIONS

SHELL_SEPARATORS = {"&&", "||", ";", "|", "&", "(", ")"}
ENV_ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")
RUNNER_BINS = {"mocha": "mocha", "_mocha": "mocha", "jest": "jest", "vitest": "vitest"}
SCRIPT_FILE = re.compile(r"\.[cm]?[jt]sx?$")


def segments(script: str) -> list[list[str]]:
    """The simple commands of a package.json script, each as tokens."""
    lexer = shlex.shlex(script or "", posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    try:
        tokens = list(lexer)
    except ValueError:  # unbalanced quotes: fall back to plain words
        tokens = (script or "").split()
    segments, current = [], []
    for token in tokens:
        if token in SHELL_SEPARATORS:
            segments.append(current)
            current = []
        elif not (not current and ENV_ASSIGNMENT.match(token)):
            current.append(token)
    return [s for s in segments + [current] if s]


def npm_run_target(tokens: list[str], i: int) -> str | None:
    """The script name of `npm run x`, `yarn x`, `pnpm run x` starting at tokens[i]."""
    tool, rest = tokens[i].rsplit("/", 1)[-1], tokens[i + 1:]
    if tool not in ("npm", "yarn", "pnpm") or not rest:
        return None
    if rest[0] in ("run", "run-script") and len(rest) > 1:
        return rest[1]
    if rest[0] in ("test", "t"):
        return "test"
    return rest[0] if tool in ("yarn", "pnpm") else None


def node_runs_tests(args: list[str]) -> bool:
    if "--test" not in args:
        return False
    scripts = [i for i, a in enumerate(args) if SCRIPT_FILE.search(a) or "node_modules/" in a]
    return not scripts or args.index("--test") < scripts[0]


def find_invocation(script: str, scripts: dict[str, str] | None = None) -> tuple[str, list[str]] | None:
    """(runner, the runner's own arguments) of the first test-runner command in a script.

    Wrappers (nyc, c8, cross-env, npx, env assignments) are skipped by scanning each command
    for the runner word; `npm run x` is followed one level through `scripts`.
    """
    for runner, tokens in invocations(script, scripts):
        return runner, tokens[1:]
    return None


def invocations(script: str, scripts: dict[str, str] | None = None,
                _depth: int = 0) -> Iterator[tuple[str, list[str]]]:
    """Every test-runner command of a script, in order: (runner, tokens from the runner's word on)."""
    for tokens in segments(script):
        for i, token in enumerate(tokens):
            base = token.rsplit("/", 1)[-1]
            if base in RUNNER_BINS:
                yield RUNNER_BINS[base], tokens[i:]
                break
            if base == "node" and node_runs_tests(tokens[i + 1:]):
                yield "node", tokens[i:]
                break
            target = npm_run_target(tokens, i)
            if target and _depth == 0 and scripts and target in scripts and scripts[target] != script:
                found = list(invocations(scripts[target], scripts, _depth + 1))
                yield from found
                if found:
                    break


def detect_js_runner(test_script: str, dev_dependencies: dict | None = None,
                     scripts: dict[str, str] | None = None) -> str:
    """'mocha' | 'jest' | 'vitest' | 'node' from the test script, else from devDependencies."""
    found = find_invocation(test_script or "", scripts)
    if found:
        return found[0]
    for runner in ("vitest", "jest", "mocha"):
        if runner in (dev_dependencies or {}):
            return runner
    raise ValueError(f"no supported JavaScript test runner in {test_script!r} or devDependencies")


# Options that make a runner wait for input or watch files instead of running once and exiting.
INTERACTIVE = {"vitest": frozenset({"--ui", "--open", "--watch", "-w"}),
               "jest": frozenset({"--watch", "--watchAll"}),
               "mocha": frozenset({"--watch", "-w"}),
               "node": frozenset({"--watch"})}
VITEST_WATCHING = frozenset({"watch", "dev"})  # vitest's subcommands that keep it running
OTHER_TEST_SCRIPTS = re.compile(r"^(?:test|tests|unit|spec)(?:[:_-][\w:.-]*)?$|^ci[:_-]test")


@dataclass
class TestCommand:
    """The project's own test-runner command, and where it was found."""

    runner: str
    command: str | None  # the runner's command line, interactive options taken out (None: the runner's defaults)
    script: str | None  # the package.json script it came from
    why: str


def interactive_options(runner: str, tokens: list[str]) -> list[str]:
    """The options (and vitest subcommand) of a runner command that make it interactive."""
    found = [t for t in tokens[1:] if t.split("=", 1)[0] in INTERACTIVE.get(runner, ())]
    if runner == "vitest" and len(tokens) > 1 and tokens[1] in VITEST_WATCHING:
        found.append(tokens[1])
    return found


def run_once(runner: str, tokens: list[str]) -> list[str]:
    """The command without its interactive options: the runner once, as a CI job runs it."""
    dropped = set(interactive_options(runner, tokens))
    kept = [tokens[0]] + [t for t in tokens[1:] if t not in dropped and t.split("=", 1)[0] not in dropped]
    if runner == "vitest" and (len(kept) == 1 or kept[1] not in ("run", *VITEST_WATCHING)):
        kept.insert(1, "run")
    return kept


def choose_test_command(scripts: dict[str, str], dependencies: dict | None = None,
                        runner: str | None = None) -> TestCommand:
    """The project's test runner run directly, never a script that chains lint or type checks
    and never an interactive mode: the runner command of the `test` script when it runs once;
    else one of another test script (`test:ci`, `test:unit`, ...) that does; else the `test`
    script's with its interactive options dropped; else the runner from the dependencies.
    `runner`: the one the configuration names (its command is looked for, nothing else)."""
    names = ["test", *sorted(n for n in scripts if n != "test" and OTHER_TEST_SCRIPTS.search(n))]
    found = [(name, kind, tokens) for name in names if name in scripts
             for kind, tokens in invocations(scripts[name], scripts) if runner in (None, kind)]
    if not found:
        chosen = runner or detect_js_runner("", dependencies)
        source = "named in .fixfleet.yml" if runner else "from the dependencies"
        return TestCommand(runner=chosen, command=None, script=None, why=f"{chosen} {source}, with its defaults")
    first = found[0]
    once = [f for f in found if not interactive_options(f[1], f[2]) and f[1] == first[1]] or \
        [f for f in found if not interactive_options(f[1], f[2])]
    name, kind, tokens = once[0] if once else first
    command = shlex.join(run_once(kind, tokens))
    script = scripts[name]
    if once and name == "test":
        extra = "" if command == script.strip() else f" (from `{script}`)"
        why = f"package.json's test script runs {kind}: `{command}`{extra}"
    elif once:
        why = (f"package.json's test script (`{scripts.get('test', '')}`) is interactive or runs no runner; "
               f"its {name} script runs {kind} once: `{command}`")
    else:
        dropped = " ".join(interactive_options(kind, tokens))
        why = f"package.json's {name} script (`{script}`) is interactive: `{command}` instead ({dropped} dropped)"
    return TestCommand(runner=kind, command=command, script=name, why=why)


def split_options(args: list[str], valued: frozenset[str], dropped: frozenset[str],
                   positional_options: frozenset[str] = frozenset()) -> tuple[list[str], list[str]]:
    """(options kept, positional arguments) of a runner's arguments from the test script."""
    keep, positional, i = [], [], 0
    while i < len(args):
        arg = args[i]
        i += 1
        if arg == "--":
            positional += args[i:]
            break
        if not arg.startswith("-") or arg == "-":
            positional.append(arg)
            continue
        name, has_value = arg.split("=", 1)[0], "=" in arg
        value = [args[i]] if name in valued and not has_value and i < len(args) else []
        i += len(value)
        if name in positional_options:
            positional += value or arg.split("=", 1)[1:]
        elif name not in dropped and not any(name.startswith(p) for p in dropped if p.endswith(".")):
            keep += [arg, *value]
    return keep, positional


# ---------------------------------------------------------------- JavaScript: globs

def closing(text: str, start: int, opening: str, closing: str) -> int:
    depth = 0
    for i in range(start, len(text)):
        depth += text[i] == opening
        depth -= text[i] == closing
        if depth == 0:
            return i
    return -1


def split_top(text: str, separator: str) -> list[str]:
    parts, depth, current = [], 0, ""
    for char in text:
        depth += char in "({"
        depth -= char in ")}"
        if char == separator and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += char
    return parts + [current]


def glob_regex(pattern: str) -> str:
    """Regex source of a minimatch-style glob: **, *, ?, [..], {a,b}, ?(a|b) and friends."""
    out, i = [], 0
    while i < len(pattern):
        char, nxt = pattern[i], pattern[i + 1:i + 2]
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif char in "?*+@!" and nxt == "(" and closing(pattern, i + 1, "(", ")") > 0:
            end = closing(pattern, i + 1, "(", ")")
            alternatives = "|".join(glob_regex(a) for a in split_top(pattern[i + 2:end], "|"))
            out.append(f"(?!(?:{alternatives}))[^/]*" if char == "!" else
                       f"(?:{alternatives}){ {'@': '', '?': '?', '*': '*', '+': '+'}[char]}")
            i = end + 1
        elif char == "{" and closing(pattern, i, "{", "}") > 0:
            end = closing(pattern, i, "{", "}")
            out.append("(?:" + "|".join(glob_regex(a) for a in split_top(pattern[i + 1:end], ",")) + ")")
            i = end + 1
        elif char == "[" and "]" in pattern[i + 2:]:
            end = pattern.index("]", i + 2)
            body = pattern[i + 1:end]
            out.append("[" + ("^" + body[1:] if body.startswith("!") else body) + "]")
            i = end + 1
        else:
            out.append({"*": "[^/]*", "?": "[^/]"}.get(char, re.escape(char)))
            i += 1
    return "".join(out)


def glob_match(path: str, pattern: str) -> bool:
    pattern = pattern.removeprefix("./")
    return re.fullmatch(glob_regex(pattern), path) is not None


def spec_patterns(positional: list[str]) -> list[str]:
    """Globs of a script's positional paths: a directory means every script file under it."""
    patterns = []
    for arg in positional:
        arg = arg.removeprefix("./")
        if any(c in arg for c in "*?[{") or SCRIPT_FILE.search(arg):
            patterns.append(arg)
        else:
            patterns.append(f"{arg.rstrip('/')}/**/*.{{{','.join(JS_EXTENSIONS)}}}")
    return patterns


NODE_TEST_DEFAULTS = ("**/*.test.?(c|m)js", "**/*-test.?(c|m)js", "**/*_test.?(c|m)js",
                      "**/test-*.?(c|m)js", "**/test.?(c|m)js", "**/test/**/*.?(c|m)js")
MOCHA_DEFAULTS = ("test/*.{js,cjs,mjs}",)
VITEST_DEFAULTS = ("**/*.{test,spec}.?(c|m)[jt]s?(x)",)


# ---------------------------------------------------------------- JavaScript: runners
