"""A free TCP port on the loopback interface, for local servers (the platform's HTTP port, the
scripted model, tests and benchmarks)."""

import socket


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]
