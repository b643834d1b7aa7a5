"""`fixfleet up`: run the platform with a live status line until Ctrl-C."""

from __future__ import annotations

import asyncio
import signal

from rich.console import Console
from rich.live import Live

from fixfleet.config import Settings
from fixfleet.overview import gather, summary_line
from fixfleet.platform import Platform, PlatformOptions
from fixfleet.services import open_services


def run_up(settings: Settings, options: PlatformOptions, console: Console) -> None:
    # Ctrl-C (SIGINT) stops it however it was started: a script's background job (`fixfleet up &`)
    # inherits SIGINT ignored, and Python and asyncio then never turn it into a stop.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    platform = Platform(settings, options)
    try:
        platform.start(progress=lambda line: console.print(f"[cyan]up:[/cyan] {line}"))
        console.print(f"[green]fixfleet is up[/green]: {platform.url} (webhooks, /tasks, /health, /metrics). "
                      "`fixfleet status` shows the agents, queues and scaling. Ctrl-C stops it.")
        asyncio.run(_show_status(platform, console))
    except KeyboardInterrupt:
        console.print("stopping… (a task cut off in hand is taken over when the platform runs again)")
    finally:
        platform.stop()


async def _show_status(platform: Platform, console: Console) -> None:
    # Settings() again: the platform put the resolved database and Redis URLs in the environment.
    async with open_services(Settings(), migrate=False, pool_size=1) as services:
        with Live(console=console, refresh_per_second=1) as live:
            while True:
                line = summary_line(await gather(services, tasks=0))
                live.update(line if platform.settings.sandbox_enabled else f"[bold red]SANDBOX OFF[/bold red] · {line}")
                await asyncio.sleep(1)
