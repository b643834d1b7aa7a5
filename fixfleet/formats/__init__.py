"""The providers' data formats, read by the webhooks (fixfleet/intake) and the API clients
(fixfleet/integrations, fixfleet/forges) alike: tolerant access to their JSON, Atlassian Document
Format, Sentry events and frames, the value of fixfleet's Slack buttons. Nothing here talks to a
network or knows a task: it sits below both sides."""
