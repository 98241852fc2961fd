"""A lost peer in a multi-process run: every survivor exits in bounded time with one line.

When a process of a multi-process run dies (SIGKILL, machine loss), JAX's coordination service
notices at once if it was process 0 (which hosts the service), otherwise after
``heartbeat_timeout_seconds`` without its heartbeats; it then aborts every other process from
C++ (``CoordinationServiceAgent::SetError``: a stack trace, exit 134). jax 0.10.2 offers no
Python hook before that abort (the client's ``missed_heartbeat_callback`` is not reachable
through ``jax.distributed.initialize``, and called from C++ it fails to convert its
``absl::Status`` argument), so :func:`supervise` runs the training in a child process and reads
its stderr: once the child shows a lost peer (the service's verdict, a failed collective), its
traceback and the C++ abort are dropped and the parent prints one ``error:`` line naming the lost
process, then exits with :data:`EXIT_LOST_PEER`. stdout is the child's own (progress bars stay
live). Set ``RESNET_JAX_WORKER=1`` to run unsupervised.
"""

from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence

EXIT_LOST_PEER = 75  # EX_TEMPFAIL (sysexits.h): a temporary failure; the same command resumes
WORKER_ENV = "RESNET_JAX_WORKER"
DEFAULT_HEARTBEAT_TIMEOUT_S = 100  # JAX's default, chosen for TPU pods (slow hosts, long steps)
GRACE_S = 10  # after the first sign of a lost peer, how long the service may take to name it
HOLD_S = 2.0  # how long a traceback or C++ error line is held back, in case a lost peer follows

# Lines that show a peer is gone: the coordination service's verdict, or a gloo collective
# whose peer closed its connection (specific: other "connection reset" lines, say of a dataset
# read, must not stop a healthy run).
_LOST = re.compile(
    r"Terminating process because the JAX distributed service detected fatal errors"
    r"|Task \d+ heartbeat timeout|stopped sending heartbeats"
    r"|Polled an error from coordination service"
    r"|Gloo .* failed: .*Connection (closed|reset) by peer"
)
_NAMED = (
    re.compile(r"Task (\d+) heartbeat timeout"),
    re.compile(r"stopped sending heartbeats\):\s*((?:\d+[\s,]*)+)"),
)
_COORDINATOR_GONE = re.compile(r"PollForError|Socket closed|failed to connect", re.IGNORECASE)
# A Python traceback, or a C++ log line of level E or F (glog: "E1204 05:14:31.07 ...").
_HOLD = re.compile(r"^(Traceback \(most recent call last\):|[EF]\d{4} )")


def lost_processes(text: str, process_id: int) -> list[int]:
    """The processes the coordination service named as lost in ``text`` (stderr); process 0 if
    the service itself went away; [] if unknown."""
    named = set()
    for pattern in _NAMED:
        for match in pattern.finditer(text):
            named.update(int(n) for n in re.findall(r"\d+", match.group(1)))
    named.discard(process_id)
    if not named and process_id != 0 and _COORDINATOR_GONE.search(text):
        named.add(0)
    return sorted(named)


def lost_peer_message(lost: Sequence[int], process_id: int, num_processes: int) -> str:
    """The one line a survivor prints (``process_id`` -1: not known here, e.g. --multihost)."""
    me = f"process {process_id}" if process_id >= 0 else "this process"
    if lost:
        who = ", ".join(f"process {p}" + (" (the coordinator)" if p == 0 else "") for p in lost)
    else:
        who = "another process (see the other processes' logs)"
    total = f" of {num_processes}" if num_processes else ""
    return (f"error: lost {who}{total}; {me} stopped too. Run the same command on every "
            "process to resume from the last checkpoint")


def _read_lines(stream, lines: queue.Queue) -> None:
    for line in iter(stream.readline, b""):
        lines.put(line)
    lines.put(None)


def _die_with_parent() -> None:
    """The child gets SIGKILL if this (supervising) process dies first (Linux)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def supervise(argv: Sequence[str], *, process_id: int, num_processes: int,
              heartbeat_timeout_s: int) -> int:
    """Runs ``python train.py argv`` as a worker and returns its exit status, or
    :data:`EXIT_LOST_PEER` after one line if it stopped because a peer was lost."""
    env = {**os.environ, WORKER_ENV: "1"}
    child = subprocess.Popen([sys.executable, *argv], env=env, stderr=subprocess.PIPE,
                             preexec_fn=_die_with_parent if sys.platform == "linux" else None)
    # Preemption (SIGTERM) reaches the worker; Ctrl-C reaches it from the terminal directly.
    signal.signal(signal.SIGTERM, lambda s, _: child.send_signal(s))
    signal.signal(signal.SIGINT, lambda s, _: None)
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=_read_lines, args=(child.stderr, lines), daemon=True).start()
    out = sys.stderr.buffer
    held: list[bytes] = []  # traceback / C++ error lines not yet known to be harmless
    held_since = 0.0
    dropped: list[bytes] = []  # what the child said after the peer was lost (for naming it)
    lost_at = None
    while True:
        try:
            line = lines.get(timeout=0.2)
        except queue.Empty:
            line = b""
        now = time.monotonic()
        if line is None:  # the child closed stderr: it is exiting
            break
        if line:
            text = line.decode(errors="replace")
            if lost_at is None and _LOST.search(text):
                lost_at, held, dropped = now, [], held + dropped
            if lost_at is not None:
                dropped.append(line)
            elif held or _HOLD.match(text):
                held.append(line)
                held_since = held_since if len(held) > 1 else now
            else:
                out.write(line)
                out.flush()
        if held and now - held_since > HOLD_S:  # nothing followed: an ordinary error
            out.write(b"".join(held))
            out.flush()
            held = []
        if lost_at is not None and now - lost_at > heartbeat_timeout_s + GRACE_S:
            child.kill()  # the service never named the peer: stop waiting
            break
    status = child.wait()
    if lost_at is None or status == 0:  # a peer closing at the very end is no loss
        out.write(b"".join(held))
        out.flush()
        return status if status >= 0 else 128 - status
    text = b"".join(dropped).decode(errors="replace")
    print(lost_peer_message(lost_processes(text, process_id), process_id, num_processes),
          file=sys.stderr, flush=True)
    return EXIT_LOST_PEER
