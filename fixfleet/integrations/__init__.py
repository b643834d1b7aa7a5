"""The SaaS APIs fixfleet talks to besides the forge (fixfleet/forges): Jira, Sentry and Slack
clients over httpx (base.py, http.py: retries, typed and credential-free errors, shared with the
GitHub client), and the seams the platform uses them through: a Tracker (tracker.py; Jira) and
the Notifier (notifier.py; Slack). fixfleet/providers.py builds them all."""
