"""`fixfleet up`: run the platform with a live status line until Ctrl-C."""

from __future__ import annotations

import asyncio
import time

from rich.console import Console
from rich.live import Live

from fixfleet.config import Settings
from fixfleet.platform import Platform, PlatformOptions
from fixfleet.services import open_services


def run_up(settings: Settings, *, address: str | None, http_port: int, executors: int, console: Console) -> None:
    platform = Platform(settings, PlatformOptions(address=address, http_port=http_port, executors=executors))
    try:
        platform.start(progress=lambda line: console.print(f"[cyan]up:[/cyan] {line}"))
        console.print(f"[green]fixfleet is up[/green]: {platform.url} (webhooks, /tasks, /health, /metrics). Ctrl-C stops it.")
        with Live(console=console, refresh_per_second=1) as live:
            while True:
                live.update(status_line(platform))
                time.sleep(1)
    except KeyboardInterrupt:
        console.print("stopping…")
    finally:
        platform.stop()


def status_line(platform: Platform) -> str:
    depths = asyncio.run(_depths(Settings()))  # the platform put the resolved URLs in the environment
    agents = platform.agent_status()
    busy = sum(1 for a in agents if a.get("busy_with"))
    done = sum(a.get("done", 0) for a in agents)
    queues = " · ".join(f"{name} {d.waiting} waiting/{d.pending} running/{d.delayed} delayed" for name, d in depths.items())
    return f"{queues} · agents {busy} busy, {len(agents) - busy} idle · {done} tasks handled"


async def _depths(settings: Settings) -> dict:
    async with open_services(settings, migrate=False, pool_size=1) as services:
        return {name: await queue.depth() for name, queue in services.queues.items()}
