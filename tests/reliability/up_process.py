"""`fixfleet up` in a process of its own, as an operator runs it, for the power-cut tests: they kill
it (and everything it started) with -9, start it again on the same FIXFLEET_HOME, and stop it
with Ctrl-C (SIGINT). The only difference from the `fixfleet up` command: each agent role gets
its own scripted model server (the stand-in of the model API).

    python -m tests.reliability.up_process '{"port": 8123, "executors": 2, "planner_model": URL,
                                             "executor_model": URL}'
"""

from __future__ import annotations

import json
import sys

from rich.console import Console

from fixfleet.config import load_settings
from fixfleet.platform import PlatformOptions
from fixfleet.up import run_up


def main() -> None:
    spec = json.loads(sys.argv[1])
    options = PlatformOptions(http_port=spec["port"], executors=spec["executors"],
                              planner_overrides={"anthropic_base_url": spec["planner_model"]},
                              executor_overrides={"anthropic_base_url": spec["executor_model"]})
    run_up(load_settings(), options, Console(width=200))


if __name__ == "__main__":
    main()
