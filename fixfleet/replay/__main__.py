"""`python -m fixfleet.replay --scenario FILE --port N [--var worktree=/tmp/x] [--record out.jsonl]`"""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path

from fixfleet.replay.server import ReplayServer


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m fixfleet.replay",
                                     description="Replay a scenario as the Anthropic Messages API.")
    parser.add_argument("--scenario", required=True,
                        help="a YAML file, or the name of a bundled scenario")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--var", action="append", default=[], metavar="NAME=VALUE",
                        help="a placeholder value, e.g. worktree=/tmp/w (repeatable)")
    parser.add_argument("--record", type=Path, help="append every request to this JSONL file")
    return parser.parse_args(argv)


async def serve(args: argparse.Namespace) -> None:
    variables = dict(item.split("=", 1) for item in args.var)
    server = ReplayServer(args.scenario, host=args.host, port=args.port,
                          variables=variables, record_path=args.record)
    await server.start_async()
    print(f"replaying {server.scenario.name!r} at {server.url}  "
          f"(export ANTHROPIC_BASE_URL={server.url})", flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await server.stop_async()


def main(argv: list[str] | None = None) -> None:
    try:
        asyncio.run(serve(parse_args(argv)))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
