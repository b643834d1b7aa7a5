"""`fixfleet up`: run the platform with a live status line until Ctrl-C."""

from __future__ import annotations

import asyncio
from typing import Any

from rich.console import Console
from rich.live import Live

from fixfleet.config import Settings
from fixfleet.platform import Platform, PlatformOptions
from fixfleet.queue import Depth
from fixfleet.services import open_services


def run_up(settings: Settings, *, address: str | None, http_port: int, executors: int, console: Console) -> None:
    platform = Platform(settings, PlatformOptions(address=address, http_port=http_port, executors=executors))
    try:
        platform.start(progress=lambda line: console.print(f"[cyan]up:[/cyan] {line}"))
        console.print(f"[green]fixfleet is up[/green]: {platform.url} (webhooks, /tasks, /health, /metrics). Ctrl-C stops it.")
        asyncio.run(_show_status(platform, console))
    except KeyboardInterrupt:
        console.print("stopping…")
    finally:
        platform.stop()


async def _show_status(platform: Platform, console: Console) -> None:
    # Settings() again: the platform put the resolved database and Redis URLs in the environment.
    async with open_services(Settings(), migrate=False, pool_size=1) as services:
        with Live(console=console, refresh_per_second=1) as live:
            while True:
                depths = {name: await queue.depth() for name, queue in services.queues.items()}
                line = status_line(depths, platform.agent_status())
                live.update(line if platform.settings.sandbox_enabled else f"[bold red]SANDBOX OFF[/bold red] · {line}")
                await asyncio.sleep(1)


def status_line(depths: dict[str, Depth], agents: list[dict[str, Any]]) -> str:
    busy = sum(1 for a in agents if a.get("busy_with"))
    done = sum(a.get("done", 0) for a in agents)
    queues = " · ".join(f"{name} {d.waiting} waiting/{d.pending} running/{d.delayed} delayed" for name, d in depths.items())
    return f"{queues} · agents {busy} busy, {len(agents) - busy} idle · {done} tasks handled"
