"""The agent side: the planner and the executor and what one Claude Code session needs.

The folder keeps the name the project was first laid out with; the agents are Ray Serve
deployments (serve_app/agents.py binds them), not Ray actors.
"""
