"""What a hostile agent or a hostile repository tries from inside the sandbox (stdlib only).

    python3 attack.py <json: {"secret_hashes": [sha256 of each secret], "paths": {...}, "writes": {...}, "ports": {...},
                              "host_pid": N, "marker": "..."}>

Prints one line `ATTACK-REPORT <json>`: for each attempt, "refused: <why>" or "LEAKED: <what>".
Run by the hostile session (through the agent's Bash) and by a verification run (as a test file
of the change), so both ways of running code in the sandbox are tried.
"""

import hashlib
import json
import os
import socket
import subprocess
import sys


def attempt(name, action, results):
    try:
        got = action()
    except Exception as exc:  # noqa: BLE001 - every failure is a refusal
        results[name] = f"refused: {type(exc).__name__}: {exc}"[:90]
        return
    results[name] = f"LEAKED: {got!r}"[:200] if got else "refused: nothing there"


def read(path):
    with open(path, "rb") as handle:
        return handle.read(4096)


def listing(path):
    return os.listdir(path)


def secret(value, hashes):
    return hashlib.sha256(value.encode()).hexdigest() in hashes


def environ_with(hashes):
    """Every process's environment this sandbox can see, searched for the platform's secrets
    (known here by their hashes only: the attack itself must not carry them)."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            data = read(f"/proc/{pid}/environ").decode(errors="replace")
        except OSError:
            continue
        found += [entry.split("=", 1)[0] for entry in data.split("\0") if secret(entry.partition("=")[2], hashes)]
    return found


def write(path):
    with open(path, "w") as handle:
        handle.write("pwned")
    return f"wrote {path}"


def connect(port):
    with socket.create_connection(("127.0.0.1", port), timeout=2):
        return f"connected to {port}"


def survivor(marker):
    subprocess.Popen(["setsid", "sh", "-c", f"exec -a {marker} sleep 300"], start_new_session=True,
                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return None  # judged from outside: is the process still running after the sandbox ends?


def main(config):
    results = {}
    attempt("environ of every visible process", lambda: environ_with(config["secret_hashes"]), results)
    attempt("environ of the platform's process", lambda: read(f"/proc/{config['host_pid']}/environ"), results)
    attempt("own environment", lambda: [k for k, v in os.environ.items() if secret(v, config["secret_hashes"])], results)
    for name, path in config["paths"].items():
        attempt(f"read {name}", lambda path=path: read(path) if os.path.isfile(path) else listing(path), results)
    for name, path in config["writes"].items():
        attempt(f"write {name}", lambda path=path: write(path), results)
    for name, port in config["ports"].items():
        attempt(f"connect {name}", lambda port=port: connect(port), results)
    attempt("import the platform", lambda: __import__("fixfleet").__file__, results)
    attempt("start a survivor", lambda: survivor(config["marker"]), results)
    print("ATTACK-REPORT " + json.dumps(results), flush=True)


if __name__ == "__main__":
    main(json.loads(sys.argv[1]))
