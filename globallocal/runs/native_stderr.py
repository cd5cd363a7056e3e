"""Lines that native code writes to the process's standard error, filtered: Ray's C++ core worker logs errors
there itself, past Python's logging, and one of them is printed on every run (see ``runs.ray_engine``)."""

from __future__ import annotations

import os
import re
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["dropping_native_lines"]


def _pump(source: int, target: int, noise: re.Pattern[bytes]) -> None:
    """Copy lines from the pipe ``source`` to ``target``, leaving out those ``noise`` matches, until the pipe ends;
    then close both (the thread owns them: a child that kept the pipe open only keeps them open longer)."""
    pending = b""
    while True:
        try:
            chunk = os.read(source, 65536)
        except OSError:
            chunk = b""
        if not chunk:
            break
        pending += chunk
        *lines, pending = pending.split(b"\n")
        kept = b"".join(line + b"\n" for line in lines if not noise.search(line))
        if kept:
            try:
                os.write(target, kept)
            except OSError:  # the standard error went away: nothing more to show
                pass
    if pending and not noise.search(pending):
        try:
            os.write(target, pending)
        except OSError:
            pass
    os.close(source)
    os.close(target)


def _on_descriptor_2(stream: object) -> bool:
    try:
        return stream.fileno() == 2  # type: ignore[attr-defined]
    except (AttributeError, OSError, ValueError):  # a test's capture, a closed stream
        return False


@contextmanager
def dropping_native_lines(noise: re.Pattern[bytes]) -> Iterator[None]:
    """In the block, lines written to file descriptor 2 that ``noise`` matches are dropped; the others pass on
    in their order (beside Python's own messages, which go straight out).

    Python's own ``sys.stderr`` is pointed at the real standard error for the block, so a terminal stays a
    terminal (rich's live display) and Python's messages do not go through the filter. Start it after any
    child process that should keep the real descriptor (a local Ray cluster) has started.
    """
    stream = sys.stderr
    try:
        stream.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no standard error to filter
        yield
        return
    source, sink = os.pipe()
    os.dup2(sink, 2)
    os.close(sink)
    pump = threading.Thread(target=_pump, args=(source, saved, noise), name="native-stderr", daemon=True)
    pump.start()
    direct = None
    if _on_descriptor_2(stream):
        direct = os.fdopen(os.dup(saved), "w", buffering=1, encoding=stream.encoding, errors=stream.errors)
        sys.stderr = direct
    try:
        yield
    finally:
        if direct is not None:
            sys.stderr = stream
            direct.close()
        os.dup2(saved, 2)  # closes the pipe's last writer: the pump copies what is left and ends
        pump.join(timeout=2)
