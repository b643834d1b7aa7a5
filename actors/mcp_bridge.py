"""The planner's SaaS MCP servers, run on the platform's side of the sandbox.

The GitHub, Jira and Sentry MCP servers need tokens; the agent must not see them. So they run
here, in the actor (outside the sandbox), started from the rendered template with their
credentials, and the CLI inside the sandbox reaches them only through the MCP protocol: each
one is offered to it as an in-process SDK server whose tools forward to the real server. No
config file with a token exists where the agent could read it, and no server process runs
in the sandbox. Tool results are redacted before the model sees them.
"""

from __future__ import annotations

import logging
from contextlib import AsyncExitStack
from typing import Any

import anyio
from claude_agent_sdk import McpSdkServerConfig
from mcp import ClientSession
from mcp.client.stdio import StdioServerParameters, stdio_client
from mcp.server import Server
from mcp.types import CallToolResult, ListToolsResult, TextContent

from fixfleet.redact import Redactor

log = logging.getLogger(__name__)
START_TIMEOUT_S = 30.0


class McpBridge:
    """`async with McpBridge(servers, redactor) as bridge:` ... `bridge.sdk_servers()`."""

    def __init__(self, servers: dict[str, dict[str, Any]], redactor: Redactor) -> None:
        self.configs, self.redactor = servers, redactor
        self.sessions: dict[str, ClientSession] = {}
        self.skipped: dict[str, str] = {}  # name -> why it is not offered
        self._stack = AsyncExitStack()

    async def __aenter__(self) -> McpBridge:
        for name, config in self.configs.items():
            try:
                with anyio.fail_after(START_TIMEOUT_S):
                    self.sessions[name] = await self._connect(config)
            except Exception as exc:  # a server that cannot start is left out, not fatal
                self.skipped[name] = f"{type(exc).__name__}: {self.redactor.text(str(exc))[:200]}"
                log.warning("MCP server %s not offered to the agent: %s", name, self.skipped[name])
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self._stack.aclose()

    async def _connect(self, config: dict[str, Any]) -> ClientSession:
        if config.get("type", "stdio") != "stdio":
            raise ValueError(f"transport {config.get('type')!r} is not bridged (stdio servers only)")
        parameters = StdioServerParameters(command=config["command"], args=list(config.get("args") or []),
                                           env=dict(config.get("env") or {}) or None)
        read, write = await self._stack.enter_async_context(stdio_client(parameters))
        session = await self._stack.enter_async_context(ClientSession(read, write))
        await session.initialize()
        return session

    def sdk_servers(self) -> dict[str, McpSdkServerConfig]:
        return {name: McpSdkServerConfig(type="sdk", name=name, instance=self._forwarder(name, session))
                for name, session in self.sessions.items()}

    def _forwarder(self, name: str, session: ClientSession) -> Server:
        async def on_list_tools(ctx: Any, params: Any) -> ListToolsResult:
            return await session.list_tools()

        async def on_call_tool(ctx: Any, params: Any) -> CallToolResult:
            try:
                result = await session.call_tool(params.name, params.arguments or {})
            except Exception as exc:  # the model reads the failure; the session goes on
                log.warning("MCP tool %s failed: %s", name, type(exc).__name__)  # type only: it may quote a token
                return CallToolResult(content=[TextContent(type="text", text=f"{name} failed: {type(exc).__name__}")],
                                      is_error=True)
            return self._redacted(result)

        return Server(name, on_list_tools=on_list_tools, on_call_tool=on_call_tool)

    def _redacted(self, result: CallToolResult) -> CallToolResult:
        content = [TextContent(type="text", text=self.redactor.text(block.text)) if isinstance(block, TextContent)
                   else block for block in result.content]
        return result.model_copy(update={"content": content})
