"""Where the agents work: mirrors, checkouts, the hardened git runner, repository
environments, the sandbox and the proxies that are its only way out."""
