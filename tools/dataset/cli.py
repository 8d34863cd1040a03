"""Command line of ``nanobragg-dataset``: a description in, a folder of images and truth.json out.

    nanobragg-dataset DESCRIPTION.toml --out DIR [--format smv|cbf|nexus|float]
                      [--workers N] [--scheduler tcp://HOST:PORT]
                      [--engine numba|torch] [--device cpu|cuda] [--no-progress]

Exit status: 0 when every image is written, 1 when some failed (a rerun
renders only those), 2 for bad input (one ``nanobragg-dataset: error:`` line
per problem), 128 + N when stopped by signal N.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys

from reference.errors import InputError
from tools.dataset.description import FORMATS

PROGRAM = "nanobragg-dataset"


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        print(f"{PROGRAM}: error: {message} (see {PROGRAM} --help)", file=sys.stderr)
        raise SystemExit(2)


def _positive(text):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expects a whole number, got '{text}'") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expects at least 1, got {value}")
    return value


def parser() -> argparse.ArgumentParser:
    p = _Parser(prog=PROGRAM, description="Render a rotation series or serial stills described by a TOML file, "
                "on a local Dask cluster or an existing one, into SMV, CBF, NeXus (NXmx) or raw float images, "
                "with truth.json recording every image's nanobragg command line, orientation and random draws.")
    p.add_argument("description", help="the dataset description (TOML; see the README's 'Datasets' section)")
    p.add_argument("--out", required=True, help="output folder (created; a rerun into it resumes)")
    p.add_argument("--format", choices=FORMATS, help="image format (default: [dataset] format, else cbf)")
    p.add_argument("--workers", type=_positive, help="local Dask worker processes (default: the machine's cores)")
    p.add_argument("--scheduler", help="address of an existing Dask scheduler, e.g. tcp://host:8786")
    p.add_argument("--engine", choices=("numba", "torch"),
                   help="engine of every image (default: the scene's, else numba)")
    p.add_argument("--device", choices=("cpu", "cuda"), help="device of the torch engine")
    p.add_argument("--no-progress", "-noprogress", dest="progress", action="store_false", help="no progress bar")
    return p


def _version() -> str:
    from reference.cli import version
    return version()


def _terminate(signum, frame):
    raise KeyboardInterrupt(signum)


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    if args.workers is not None and args.scheduler:
        print(f"{PROGRAM}: error: --workers starts a local cluster; with --scheduler the cluster's own "
              f"workers render", file=sys.stderr)
        return 2
    from tools.dataset import description, execution, manifest, plan

    try:
        desc = description.load(args.description)
        fmt = args.format or desc.format or "cbf"
        the_plan = plan.build(desc, fmt, args.out, args.engine, args.device)
        os.makedirs(args.out, exist_ok=True)
        manifest.write_json(os.path.join(args.out, manifest.TRUTH), plan.truth(the_plan, _version()))
        workers = args.workers or (None if args.scheduler else execution.cpus())
        outcome = execution.run(the_plan, args.out, workers, args.scheduler, args.progress)
    except description.DescriptionError as exc:
        for line in exc.lines:
            print(f"{PROGRAM}: error: {line}", file=sys.stderr)
        return 2
    except InputError as exc:
        print(f"{PROGRAM}: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"{PROGRAM}: error: {exc.filename or args.out}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:
        signum = exc.args[0] if exc.args and isinstance(exc.args[0], int) else signal.SIGINT
        print(f"{PROGRAM}: interrupted; rerun the same command to finish", file=sys.stderr)
        return 128 + int(signum)
    print(f"{PROGRAM}: {outcome.total} images in {args.out} ({outcome.rendered} rendered, {outcome.skipped} "
          f"already there, {len(outcome.failed)} failed) in {outcome.seconds:.1f} s")
    if outcome.failed:
        print(f"{PROGRAM}: error: {len(outcome.failed)} image{'s' if len(outcome.failed) > 1 else ''} failed; "
              f"rerun the same command to retry them", file=sys.stderr)
        return 1
    return 0


def console_main() -> None:
    """The ``nanobragg-dataset`` script: SIGTERM and SIGHUP stop it as Ctrl-C does (files stay whole)."""
    for name in ("SIGTERM", "SIGHUP"):
        if hasattr(signal, name):
            signal.signal(getattr(signal, name), _terminate)
    sys.exit(main())


if __name__ == "__main__":
    console_main()
