"""Starting a child that inherits nothing but stdin, stdout and stderr.

Ray's async actors run uvloop, whose subprocess spawning ignores `close_fds`: a child inherits
every inheritable descriptor of the actor (its Redis and Postgres connections, Ray's sockets).
A background process a git hook started once held them and hung a commit for 7 minutes; a
sandboxed process holding them could talk to Redis through them. So every child starts
through this shim, which closes every descriptor above 2 and then execs the command.
"""

from __future__ import annotations

# bash: close every descriptor above 2 (the ones /proc lists), for a script to start with.
CLOSE_INHERITED = 'for fd in /proc/self/fd/*; do n=${fd##*/}; if [ "$n" -gt 2 ]; then eval "exec $n>&-"; fi; done'
CLOSE_FDS = CLOSE_INHERITED + '; exec "$@"'


def without_inherited_fds(argv: list[str]) -> list[str]:
    """`argv`, started so that it keeps descriptors 0-2 only, whatever event loop spawns it.

    `--norc`: uvloop hands a child a socket as stdin, and bash takes a `bash -c` whose stdin is a
    socket for a remote shell and runs ~/.bashrc (measured: a machine's `pyenv init` in it ran a
    shim rehash before every git command, each waiting up to 60 s for the rehash lock)."""
    return ["/bin/bash", "--norc", "-c", CLOSE_FDS, "fixfleet-exec", *argv]
