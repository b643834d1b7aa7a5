"""A free TCP port on the loopback interface, for local servers (the platform's HTTP port, the
scripted model, tests and benchmarks)."""

import socket


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on at `host` now ("0.0.0.0": on every interface)."""
    with socket.socket() as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]
