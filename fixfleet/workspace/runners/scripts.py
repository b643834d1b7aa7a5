"""Reading package.json test scripts: which JavaScript runner they start, with which options and
test paths, and matching files against a runner's globs (a pure function over names)."""

from __future__ import annotations

import re
import shlex

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


def find_invocation(script: str, scripts: dict[str, str] | None = None,
                    _depth: int = 0) -> tuple[str, list[str]] | None:
    """(runner, the runner's own arguments) of the first test-runner command in a script.

    Wrappers (nyc, c8, cross-env, npx, env assignments) are skipped by scanning each command
    for the runner word; `npm run x` is followed one level through `scripts`.
    """
    for tokens in segments(script):
        for i, token in enumerate(tokens):
            base = token.rsplit("/", 1)[-1]
            if base in RUNNER_BINS:
                return RUNNER_BINS[base], tokens[i + 1:]
            if base == "node" and node_runs_tests(tokens[i + 1:]):
                return "node", tokens[i + 1:]
            target = npm_run_target(tokens, i)
            if target and _depth == 0 and scripts and target in scripts and scripts[target] != script:
                found = find_invocation(scripts[target], scripts, _depth + 1)
                if found:
                    return found
    return None


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
