"""A process's own memory, read from /proc (Linux), for figures measured in a process of
their own (the llama.cpp worker, `cli.bench_own_process`). Imports nothing but the standard
library, so a worker that must stay light can use it.

``VmHWM``, the most this address space has held resident, starts from zero in a fresh
interpreter; ``ru_maxrss`` does not: a child inherits its parent's high-water mark at the
fork, so a child of a 1.2 GB harness reports at least 1.2 GB.
"""

from __future__ import annotations


def status_mb(field: str) -> float:
    """Field `field` of /proc/self/status in MB (``VmRSS``: resident now; ``VmHWM``: the
    most resident so far). RuntimeError where the file has no such field."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"/proc/self/status has no {field}")


def restart_peak() -> bool:
    """Start ``VmHWM`` over from the resident size now (``5`` to /proc/self/clear_refs);
    False where that is refused."""
    try:
        with open("/proc/self/clear_refs", "w") as clear_refs:
            clear_refs.write("5")
    except OSError:
        return False
    return True
