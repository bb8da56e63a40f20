"""Shared plumbing of the `python -m lmrec.<stage>` entry points."""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Callable, Iterable

from absl import app, flags, logging

from lmrec import console, settings, shipped_configs
from lmrec import flags as lmrec_flags
from lmrec.errors import UserError


def run_stage(
    stage: str,
    main: Callable[[list[str]], int | None],
    positional: bool,
    extra: Iterable[dataclasses.Field] = (),
) -> None:
    """Defines a stage's flags and runs main under absl, UserError shown as one line (status 2).

    Flags of other lmrec stages (from a shared flagfile) are accepted and ignored; any
    other unknown flag fails with absl's message naming it. --quiet silences lmrec's
    progress messages (lmrec.console).

    Args:
      stage: the lmrec.flags.STAGES name whose flags the command defines.
      main: the stage's main(argv); argv[1:] holds positional arguments.
      positional: whether the stage takes positional arguments (predict's photos);
        if not, any is an error (usually a flag missing its leading --).
      extra: settings of a script's own, defined beside the stage's.
    """
    extra = list(extra)
    # Grouped under the main module, so that --help (which shows that module) lists them.
    lmrec_flags.define(stage, flags.FLAGS, module_name=sys.argv[0], extra=extra)
    others = lmrec_flags.others(stage, extra)

    def parse(argv: list[str]) -> list[str]:
        return app.parse_flags_with_usage(settings.with_others_accepted(argv, others))

    def guarded(argv: list[str]) -> int | None:
        if not flags.FLAGS["verbosity"].present:
            # TensorFlow logs every SavedModel detail at INFO through absl; keep the console for
            # lmrec's own messages unless --verbosity asks for more.
            logging.set_verbosity(logging.WARNING)
        console.set_quiet(flags.FLAGS.quiet)
        try:
            if not positional and len(argv) > 1:
                raise UserError(f"Unexpected arguments: {' '.join(argv[1:])} (flags start with --)")
            return main(argv)
        except UserError as error:
            program = argv[0].rsplit("/", 1)[-1] if argv else "lmrec"
            print(f"{program}: error: {error}", file=sys.stderr)
            return 2

    # absl's own message for a missing flagfile does not say that a pip install keeps
    # lmrec's configs inside the package.
    missing = shipped_configs.missing_flagfile_hint(sys.argv[1:])
    if missing:
        print(f"{sys.argv[0].rsplit('/', 1)[-1]}: error: {missing}", file=sys.stderr)
        sys.exit(2)
    app.run(guarded, flags_parser=parse)
