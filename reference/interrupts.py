"""SIGINT, SIGTERM and SIGHUP as an exception, for the ``nanobragg`` command.

:func:`install` (called by the console entry point only, never on import)
makes each of these signals raise :class:`Interrupted` in the main thread.
The exception unwinds through the staged writes of :mod:`reference.run`,
which remove their temporary files, and the entry point then prints one line
and exits with status 128 + the signal number, as a shell reports a program
killed by that signal.

Python runs a signal handler between two bytecodes of the main thread, so a
signal that arrives inside compiled code (a Numba kernel, a torch operation)
takes effect when that call returns; the engines therefore call their
kernels in blocks (rows of about a quarter second in the reference, memory-
bounded chunks in torch), so that a run stops within about a second.

:func:`held` marks a short critical section (the final renames of the output
files, the removal of temporaries): a signal arriving inside it is kept and
raised as soon as the section ends, so that the section always completes.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys

# the signals that stop a run cleanly; SIGHUP does not exist on Windows
SIGNALS = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name))


class Interrupted(BaseException):
    """A run stopped by a signal.  A BaseException, so that no ``except Exception`` swallows it."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = int(signum)

    @property
    def name(self) -> str:
        try:
            return signal.Signals(self.signum).name
        except ValueError:
            return "signal %d" % self.signum

    @property
    def exit_status(self) -> int:
        return 128 + self.signum


_depth = 0            # nesting depth of held() sections
_pending = []         # signals that arrived inside one


# Code an exception must not be raised into: compiler callbacks called from C (Numba's and
# llvmlite's), where it would be printed as "Exception ignored" and lost, and finalizers
_UNSAFE_PARTS = (os.sep + "numba" + os.sep, os.sep + "llvmlite" + os.sep)
REDELIVERY_S = 0.02


def _unsafe(frame) -> bool:
    if frame is None:
        return False
    return frame.f_code.co_name == "__del__" or any(part in frame.f_code.co_filename for part in _UNSAFE_PARTS)


def _redeliver(signum) -> None:
    """Send ``signum`` to this process again shortly, from a timer thread."""
    import threading
    timer = threading.Timer(REDELIVERY_S, os.kill, args=(os.getpid(), signum))
    timer.daemon = True
    timer.start()


def _handler(signum, frame):
    if _depth > 0:
        _pending.append(signum)
        return
    if _unsafe(frame):
        # inside the compiler's own code (loading a cached kernel, say): try again in a moment
        _redeliver(signum)
        return
    raise Interrupted(signum)


def install() -> None:
    """Make SIGINT, SIGTERM and SIGHUP raise :class:`Interrupted` (main thread only)."""
    for signum in SIGNALS:
        signal.signal(signum, _handler)


def _exit_now(signum, frame):
    try:
        os.write(2, ("nanobragg: interrupted by %s\n" % signal.Signals(signum).name).encode())
    except OSError:
        pass                    # a hung-up terminal (SIGHUP) may refuse the line
    os._exit(128 + signum)


def finishing() -> None:
    """For the command's last steps, when every file is in place and nothing is left to clean
    up: a signal ends the process at once, with the same line and status as during the run."""
    for signum in SIGNALS:
        signal.signal(signum, _exit_now)


def leave(status: int) -> None:
    """End the process with ``status`` without the interpreter's shut-down.

    The shut-down gives every signal its default action back, and a signal
    is delivered to whichever thread does not block it (Numba's and torch's
    worker threads included), so one arriving then would kill the process
    half-way, with no line and no status of ours.  Leaving at once avoids
    that, and the shut-down's sweep over thousands of compiled-code objects
    (a few tenths of a second).  Everything the run wrote is closed by now;
    only the standard streams need flushing.
    """
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(status)


@contextlib.contextmanager
def held():
    """Run the block to its end even when a signal arrives; raise it afterwards."""
    global _depth
    _depth += 1
    try:
        yield
    finally:
        _depth -= 1
    if _depth == 0 and _pending:
        signum = _pending[0]
        del _pending[:]
        raise Interrupted(signum)
