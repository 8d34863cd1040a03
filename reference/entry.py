"""The ``nanobragg`` script's entry point: signal handlers first, then everything else.

Importing the command line (NumPy, the flag table) takes about 0.05 s.  A
signal that arrived in that time used to meet Python's defaults (a
KeyboardInterrupt traceback for Ctrl-C); installing the handlers before
those imports, and holding a signal until they are done, makes it end the
run like any other signal: one line and status 128 + n.  Only the interpreter's own start-up, before this module
runs, is left uncovered.
"""

from __future__ import annotations

import sys


def console_main() -> None:
    from reference import interrupts
    interrupts.install()
    try:
        # a signal inside an extension module's import would surface as an ImportError:
        # hold it until the imports are done, then act on it
        with interrupts.held():
            from reference import cli
        cli.console_main()              # never returns
    except interrupts.Interrupted as exc:
        # before the command line's own handling starts, or while it reports a first signal
        try:
            print(f"nanobragg: interrupted by {exc.name}", file=sys.stderr)
        except (OSError, ValueError):
            pass
        interrupts.leave(exc.exit_status)
