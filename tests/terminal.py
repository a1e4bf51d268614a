"""A child process in a pseudo-terminal of a given size, as a user's terminal would run it."""

from __future__ import annotations

import fcntl
import os
import pty
import select
import struct
import subprocess
import termios
import time


def open_terminal(columns: int, lines: int) -> tuple[int, int]:
    """A pty (master, slave) that says it is `columns` x `lines`."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", lines, columns, 0, 0))
    return master, slave


def read_until_exit(master: int, proc: subprocess.Popen, timeout: float) -> str:
    """Everything written to the terminal until `proc` exits or closes it (at most `timeout` seconds)."""
    chunks = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([master], [], [], 0.2)
        if ready:
            try:
                data = os.read(master, 65536)
            except OSError:  # the child closed the terminal
                break
            if not data:
                break
            chunks.append(data)
        elif proc.poll() is not None:
            break
    return b"".join(chunks).decode("utf-8", errors="replace")
