"""Scripted stand-in for the Anthropic Messages API, so the real claude CLI runs offline."""

from fixfleet.replay.scenario import SCENARIO_DIR, Scenario
from fixfleet.replay.server import RecordedRequest, ReplayServer

__all__ = ["SCENARIO_DIR", "RecordedRequest", "ReplayServer", "Scenario"]
