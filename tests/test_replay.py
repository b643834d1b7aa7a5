"""The scripted Messages-API stand-in, spoken to over plain HTTP (the CLI's use: test_runner)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from fixfleet.ports import free_port
from fixfleet.replay import SCENARIO_DIR, ReplayServer, Scenario

TOOLS = [{"name": "Bash", "description": "run", "input_schema": {"type": "object"}}]
BRANCHING = {
    "turns": [
        {"content": [{"text": "Running the tests."},
                     {"tool_use": {"name": "Bash",
                                   "input": {"command": "cd {worktree} && pytest"}}}]},
        {"branch": [
            {"name": "failed", "when": {"regex": r"\d+ failed"},
             "content": [{"text": "Red, as expected."}]},
            {"name": "error", "when": {"is_error": True}, "content": [{"text": "It broke."}]},
            {"name": "passed", "content": [{"text": "Green."}]},
        ]},
    ],
    "usage": {"input_tokens": 321, "output_tokens": 12},
}


def body(messages: list[dict], stream: bool = True, **extra: object) -> dict:
    return {"model": "claude-sonnet-4-5", "max_tokens": 1000, "stream": stream,
            "tools": TOOLS, "messages": messages, **extra}


def user(text: str = "fix it") -> dict:
    return {"role": "user", "content": text}


def after_tool(result: str, is_error: bool = False) -> list[dict]:
    return [user(), {"role": "assistant", "content": [
        {"type": "tool_use", "id": "toolu_1", "name": "Bash", "input": {}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1",
                                      "content": [{"type": "text", "text": result}],
                                      "is_error": is_error}]}]


def sse(response: httpx.Response) -> list[tuple[str, dict]]:
    """Parse an SSE body into (event, data) pairs."""
    events, name = [], None
    for line in response.text.splitlines():
        if line.startswith("event: "):
            name = line[len("event: "):]
        elif line.startswith("data: "):
            events.append((name, json.loads(line[len("data: "):])))
    return events


def assemble(events: list[tuple[str, dict]]) -> dict:
    """Rebuild the message from the stream the way an SDK does."""
    message: dict = {}
    partial: dict[int, str] = {}
    for name, data in events:
        if name == "message_start":
            message = data["message"]
        elif name == "content_block_start":
            message["content"].append(data["content_block"])
        elif name == "content_block_delta":
            delta, index = data["delta"], data["index"]
            if delta["type"] == "text_delta":
                message["content"][index]["text"] += delta["text"]
            else:
                partial[index] = partial.get(index, "") + delta["partial_json"]
        elif name == "message_delta":
            message["stop_reason"] = data["delta"]["stop_reason"]
            message["usage"]["output_tokens"] = data["usage"]["output_tokens"]
    for index, raw in partial.items():
        message["content"][index]["input"] = json.loads(raw)
    return message


@pytest.fixture
def server(tmp_path: Path):
    with ReplayServer(BRANCHING, variables={"worktree": "/w/tree"},
                      record_path=tmp_path / "requests.jsonl") as running:
        yield running


def test_streams_tool_use_exactly_like_the_api(server: ReplayServer) -> None:
    response = httpx.post(f"{server.url}/v1/messages?beta=true", json=body([user()]))
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    events = sse(response)
    names = [name for name, _ in events]
    assert names[:2] == ["message_start", "ping"]
    assert names[-2:] == ["message_delta", "message_stop"]
    assert "content_block_stop" in names
    message = assemble(events)
    assert message["stop_reason"] == "tool_use"
    assert message["content"][0] == {"type": "text", "text": "Running the tests."}
    tool_use = message["content"][1]
    assert tool_use["name"] == "Bash" and tool_use["id"].startswith("toolu_")
    assert tool_use["input"] == {"command": "cd /w/tree && pytest"}  # placeholder filled
    assert message["usage"]["input_tokens"] == 321 and message["usage"]["output_tokens"] == 12


def test_json_answer_when_not_streamed(server: ReplayServer) -> None:
    response = httpx.post(f"{server.url}/v1/messages", json=body([user()], stream=False))
    message = response.json()
    assert message["type"] == "message" and message["role"] == "assistant"
    assert message["content"][1]["input"]["command"].startswith("cd /w/tree")
    assert message["usage"] == {"input_tokens": 321, "output_tokens": 12,
                                "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0}


@pytest.mark.parametrize(("result", "is_error", "branch", "text"), [
    ("=== 1 failed, 2 passed in 0.1s ===", False, "failed", "Red, as expected."),
    ("=== 3 passed in 0.1s ===", False, "passed", "Green."),
    ("command not found", True, "error", "It broke."),
])
def test_branches_on_the_last_tool_result(server: ReplayServer, result: str, is_error: bool,
                                          branch: str, text: str) -> None:
    response = httpx.post(f"{server.url}/v1/messages", json=body(after_tool(result, is_error)))
    message = assemble(sse(response))
    assert message["content"] == [{"type": "text", "text": text}]
    assert message["stop_reason"] == "end_turn"
    recorded = server.main_requests()[-1]
    assert (recorded.turn_index, recorded.branch) == (1, branch)


def test_turn_comes_from_the_conversation_so_retries_repeat_it(server: ReplayServer) -> None:
    first = assemble(sse(httpx.post(f"{server.url}/v1/messages", json=body([user()]))))
    again = assemble(sse(httpx.post(f"{server.url}/v1/messages", json=body([user()]))))
    assert first["content"][0] == again["content"][0]
    assert [r.turn_index for r in server.main_requests()] == [0, 0]


def test_past_the_last_turn_the_model_ends(server: ReplayServer) -> None:
    history = after_tool("ok") + [{"role": "assistant", "content": "Green."}, user("and?")]
    message = assemble(sse(httpx.post(f"{server.url}/v1/messages", json=body(history))))
    assert message["content"] == [{"type": "text", "text": "Done."}]
    assert message["stop_reason"] == "end_turn"


def test_side_requests_do_not_consume_turns(server: ReplayServer) -> None:
    title = {"model": "claude-haiku-4-5", "max_tokens": 50, "stream": False,
             "messages": [user("Summarize this conversation as a title")]}
    answer = httpx.post(f"{server.url}/v1/messages", json=title).json()
    assert answer["content"][0]["type"] == "text" and answer["usage"]["output_tokens"] > 0
    message = assemble(sse(httpx.post(f"{server.url}/v1/messages", json=body([user()]))))
    assert message["content"][0]["text"] == "Running the tests."  # still turn 0
    assert [r.kind for r in server.requests] == ["side", "main"]


def test_other_calls_get_sensible_answers(server: ReplayServer) -> None:
    count = httpx.post(f"{server.url}/v1/messages/count_tokens?beta=true",
                       json={"model": "m", "messages": [user("x" * 400)]})
    assert count.status_code == 200 and count.json()["input_tokens"] > 50
    models = httpx.get(f"{server.url}/v1/models")
    assert models.json()["data"][0]["type"] == "model"
    missing = httpx.get(f"{server.url}/api/oauth/profile", timeout=2)
    assert missing.status_code == 404
    assert missing.json()["error"]["type"] == "not_found_error"
    bad = httpx.post(f"{server.url}/v1/messages", json={"model": "m"})
    assert bad.status_code == 400 and bad.json()["type"] == "error"


def test_records_every_request_in_memory_and_jsonl(server: ReplayServer, tmp_path: Path) -> None:
    httpx.post(f"{server.url}/v1/messages?beta=true", json=body([user()]),
               headers={"x-api-key": "sk-ant-test"})
    recorded = server.requests[-1]
    assert recorded.path == "/v1/messages" and recorded.query == {"beta": "true"}
    assert recorded.headers["x-api-key"] == "sk-ant-test"
    assert recorded.body["messages"][0]["content"] == "fix it"
    assert "fix it" in recorded.text()
    lines = (tmp_path / "requests.jsonl").read_text().splitlines()
    assert json.loads(lines[-1])["turn_index"] == 0


@pytest.mark.parametrize(("status", "kind"), [(429, "rate_limit_error"),
                                              (529, "overloaded_error"), (500, "api_error")])
def test_status_errors_have_the_api_shape_then_the_turn_succeeds(status: int, kind: str) -> None:
    scenario = {"turns": [{"content": [{"text": "finally"}],
                           "error": {"status": status, "retry_after": 2, "times": 2}}]}
    with ReplayServer(scenario) as server:
        url = f"{server.url}/v1/messages"
        for _ in range(2):
            failed = httpx.post(url, json=body([user()]))
            assert failed.status_code == status
            assert failed.headers["retry-after"] == "2"
            error = failed.json()
            assert error["type"] == "error" and error["error"]["type"] == kind
            assert error["error"]["message"]
        answer = assemble(sse(httpx.post(url, json=body([user()]))))
        assert answer["content"][0]["text"] == "finally"
        assert [r.failure for r in server.main_requests()] == [str(status), str(status), None]


def test_a_cut_stream_ends_mid_message() -> None:
    scenario = {"turns": [{"content": [{"text": "long answer " * 20}],
                           "error": {"kind": "cut", "after_events": 4}}]}
    with ReplayServer(scenario) as server:
        with pytest.raises(httpx.RemoteProtocolError):
            httpx.post(f"{server.url}/v1/messages", json=body([user()]))
        retried = assemble(sse(httpx.post(f"{server.url}/v1/messages", json=body([user()]))))
        assert retried["content"][0]["text"].startswith("long answer")


@pytest.mark.parametrize("after_events", [0, 3])
def test_a_stall_sends_nothing_then_drops(after_events: int) -> None:
    scenario = {"turns": [{"content": [{"text": "late"}],
                           "error": {"kind": "stall", "after_events": after_events,
                                     "seconds": 30}}]}
    with ReplayServer(scenario) as server:
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(f"{server.url}/v1/messages", json=body([user()]), timeout=0.5)
        started = time.monotonic()
    assert time.monotonic() - started < 20  # stop() does not wait for the stall's 30 s


def test_every_bundled_scenario_loads() -> None:
    names = sorted(path.stem for path in SCENARIO_DIR.glob("*.yaml"))
    assert {"planner_plan", "executor_tdd", "one_turn", "loop", "expensive", "stall",
            "guardrails", "overloaded"} <= set(names)
    for name in names:
        assert Scenario.load(name).turns


def test_invalid_scenarios_are_refused() -> None:
    with pytest.raises(ValueError):
        Scenario.load({"turns": [{"content": [{"text": "a", "tool_use": {"name": "Bash"}}]}]})
    with pytest.raises(ValueError):
        Scenario.load({"turns": [{"name": "neither"}]})




def test_command_line_serves_a_bundled_scenario() -> None:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "fixfleet.replay", "--scenario", "one_turn", "--port", str(port)],
        stdout=subprocess.PIPE, text=True)
    try:
        assert "replaying" in (process.stdout.readline() if process.stdout else "")
        answer = httpx.post(f"http://127.0.0.1:{port}/v1/messages", json=body([user()]))
        assert assemble(sse(answer))["content"][0]["text"] == "Nothing to do."
    finally:
        process.terminate()
        process.wait(timeout=10)


def test_a_session_whose_prompt_matches_a_conversation_plays_that_conversation() -> None:
    scenario = BRANCHING | {"conversations": [
        {"prompt": "^A reviewer asks", "turns": [{"content": [{"text": "The guard belongs in mean()."}]}],
         "final_text": "Answered."}]}
    with ReplayServer(scenario) as running:
        asked = assemble(sse(httpx.post(f"{running.url}/v1/messages", json=body([user("A reviewer asks: why?")]))))
        after = body([user("A reviewer asks: why?"), {"role": "assistant", "content": "The guard belongs in mean()."},
                      user("and?")])
        ended = assemble(sse(httpx.post(f"{running.url}/v1/messages", json=after)))
        planned = assemble(sse(httpx.post(f"{running.url}/v1/messages", json=body([user("fix it")]))))
    assert asked["content"] == [{"type": "text", "text": "The guard belongs in mean()."}]
    assert ended["content"] == [{"type": "text", "text": "Answered."}]
    assert planned["content"][0]["text"] == "Running the tests."  # any other session: the scenario's own turns
