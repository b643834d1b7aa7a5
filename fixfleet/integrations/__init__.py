"""Clients of the SaaS APIs fixfleet talks to (GitHub, Jira, Sentry, Slack), over httpx."""
