"""Shared plumbing of the `python -m lmrec.<stage>` entry points."""

from __future__ import annotations

import sys
from collections.abc import Callable

from absl import app, flags, logging

from lmrec.errors import UserError


def run_stage(main: Callable[[list[str]], int | None], positional: bool) -> None:
    """Runs main under absl: flags parsed, UserError shown as one line with exit status 2.

    Args:
      main: the stage's main(argv); argv[1:] holds positional arguments.
      positional: whether the stage takes positional arguments (predict's photos);
        if not, any is an error (usually a flag missing its leading --).
    """

    def guarded(argv: list[str]) -> int | None:
        if not flags.FLAGS["verbosity"].present:
            # TensorFlow logs every SavedModel detail at INFO through absl; keep the console for
            # lmrec's own messages unless --verbosity asks for more.
            logging.set_verbosity(logging.WARNING)
        try:
            if not positional and len(argv) > 1:
                raise UserError(f"Unexpected arguments: {' '.join(argv[1:])} (flags start with --)")
            return main(argv)
        except UserError as error:
            program = argv[0].rsplit("/", 1)[-1] if argv else "lmrec"
            print(f"{program}: error: {error}", file=sys.stderr)
            return 2

    from lmrec import copy_configs

    # absl's own message for a missing flagfile does not say that a pip install keeps
    # lmrec's configs inside the package.
    missing = copy_configs.missing_flagfile_hint(sys.argv[1:])
    if missing:
        print(f"{sys.argv[0].rsplit('/', 1)[-1]}: error: {missing}", file=sys.stderr)
        sys.exit(2)
    app.run(guarded)
