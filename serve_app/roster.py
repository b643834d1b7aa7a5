"""The agents the application runs now, as Serve's controller lists them: the relay's evidence
that an agent named in a queue claim is gone (fixfleet/takeover.py)."""

from __future__ import annotations

from typing import Any

from ray import serve

AGENT_DEPLOYMENTS = ("planner", "executor")  # an agent's name is "<deployment>-<replica id>"


class ServeRoster:
    """Every replica of the agent deployments in any state (starting, running, stopping: a
    draining agent still finishes its task), read from the controller each time."""

    def __init__(self, app_name: str) -> None:
        self.app_name = app_name

    async def agent_names(self) -> set[str] | None:
        from ray.serve.context import _get_global_client  # the controller's handle, as `serve status` gets it

        controller = _get_global_client()._controller  # noqa: SLF001
        details: dict[str, Any] = await controller.get_serve_instance_details.remote()
        return agent_names(details, self.app_name)


def agent_names(details: dict[str, Any], app_name: str) -> set[str] | None:
    """The agent names in Serve's instance details; None when the application or its agent
    deployments are not there (a verdict from a list that cannot be complete would be wrong)."""
    deployments = ((details.get("applications") or {}).get(app_name) or {}).get("deployments") or {}
    found = [name for name in AGENT_DEPLOYMENTS if name in deployments]
    if not found:
        return None
    return {f"{name}-{replica['replica_id']}" for name in found for replica in deployments[name].get("replicas") or []}


def this_application() -> str:
    return serve.get_replica_context().app_name
