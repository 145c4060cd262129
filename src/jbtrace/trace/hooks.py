"""Named points where a test can kill the process (SIGKILL, as a preempted node would),
deterministically.

``JBTRACE_TEST_KILL=POINT:N`` kills the process the N-th time it reaches POINT (1-based,
counted per process). With ``JBTRACE_TEST_KILL_ONCE=FILE`` it kills only if it can create
FILE, so a restarted worker does not die again at the same point. Unset (always, outside
tests), ``reached`` only compares a string.
"""

from __future__ import annotations

import os
import signal

_seen: dict[str, int] = {}


def reached(point: str) -> None:
    """Count a pass through ``point``; die here if the environment asks for it."""
    asked = os.environ.get("JBTRACE_TEST_KILL")
    if not asked:
        return
    name, _, nth = asked.rpartition(":")
    if name != point:
        return
    _seen[point] = _seen.get(point, 0) + 1
    if _seen[point] != int(nth):
        return
    once = os.environ.get("JBTRACE_TEST_KILL_ONCE")
    if once:
        try:
            os.close(os.open(once, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:
            return
    os.kill(os.getpid(), signal.SIGKILL)
