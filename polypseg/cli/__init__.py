"""The `polypseg` command: one console script, a module of subcommands per job.

Each module's `register(commands)` adds its subcommands; platforms (Label Studio, CVAT) add
theirs through `polypseg.plugins`, so this package imports no platform code.
"""

from __future__ import annotations

import argparse
import logging
import sys
import warnings
from collections.abc import Sequence

from polypseg.cli import detect, evaluate, retrain, segment, serve, train, video
from polypseg.cli.options import log
from polypseg.errors import PolypsegError

COMMAND_MODULES = (segment, evaluate, detect, video, train, retrain, serve)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="polypseg", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    commands = parser.add_subparsers(dest="command", required=True)
    for module in COMMAND_MODULES:
        module.register(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s"
    )
    # sam2 scripts its transforms with torch.jit, which torch now warns about on every load.
    warnings.filterwarnings("ignore", category=FutureWarning, module="torch.jit")
    try:
        args.run(args)
    except PolypsegError as exc:
        log.error("%s", exc)
        return 2
    except OSError as exc:  # an output that cannot be written, a disk that is full
        log.error("%s", exc)
        return 1
    except KeyboardInterrupt:
        log.error("interrupted")
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
