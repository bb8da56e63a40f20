"""python -m lmrec.gallery build|add|remove|list: a model's gallery from the command line.

    python -m lmrec.gallery build  --model_dir=runs/demo [--data=photos/by_class]
    python -m lmrec.gallery add    --model_dir=runs/demo --label="Cầu Rồng" PHOTOS...
    python -m lmrec.gallery add    --model_dir=runs/demo --distractors=DIR [PHOTOS...]
    python -m lmrec.gallery remove --model_dir=runs/demo --label="Cầu Rồng"
    python -m lmrec.gallery list   --model_dir=runs/demo

The subcommand is the first argument; add takes the photos (files or folders) after it.
"""

from __future__ import annotations

from collections.abc import Callable

from absl import flags

from lmrec import cli, config, console
from lmrec import gallery as gallery_api
from lmrec.errors import UserError
from lmrec.registry import Registry


def _build(settings: config.GalleryConfig, values, photos: list[str]) -> int:
    _no_photos("build", photos)
    gallery_api.build(
        values.model_dir, values.data, values.batch_size, verbose=not console.is_quiet()
    )
    return 0


def _add(settings: config.GalleryConfig, values, photos: list[str]) -> int:
    distractors = bool(values.distractors)
    if distractors:
        photos = [values.distractors, *photos]
    if not photos:
        raise UserError("add needs photos: files or folders after the flags")
    result = gallery_api.add(
        values.model_dir,
        settings.label,
        photos,
        distractors=distractors,
        batch_size=values.batch_size,
        verbose=not console.is_quiet(),
    )
    # The result line goes to stdout, the progress to stderr.
    print(
        f"{result.label}\tadded {result.added}\talready present {result.already_present}"
        f"\tfailed {len(result.failures)}"
    )
    return 0


def _remove(settings: config.GalleryConfig, values, photos: list[str]) -> int:
    _no_photos("remove", photos)
    gallery_api.remove(values.model_dir, settings.label, verbose=not console.is_quiet())
    return 0


def _list(settings: config.GalleryConfig, values, photos: list[str]) -> int:
    _no_photos("list", photos)
    print(format_table(gallery_api.list_labels(values.model_dir)))
    return 0


def _no_photos(command: str, photos: list[str]) -> None:
    if photos:
        raise UserError(f"{command} takes no photos: {' '.join(photos)} (flags start with --)")


def format_table(labels: list[dict]) -> str:
    """label / count / origin columns, the names left-aligned."""
    rows = [("label", "count", "origin")]
    rows += [(e["name"], str(e["count"]), e["origin"]) for e in labels]
    rows.append(("total", str(sum(e["count"] for e in labels)), f"{len(labels)} labels"))
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    return "\n".join(
        f"{name:<{widths[0]}}  {count:>{widths[1]}}  {origin}" for name, count, origin in rows
    )


# subcommand -> (settings, parsed flags, photos) -> exit status
COMMANDS: Registry[Callable[..., int]] = Registry(
    "gallery command",
    {"build": _build, "add": _add, "remove": _remove, "list": _list},
)


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        raise UserError(
            "Which gallery command? python -m lmrec.gallery build|add|remove|list --model_dir=..."
        )
    if argv[1] not in COMMANDS.names():
        close = COMMANDS.closest(argv[1])
        hint = f" (did you mean {close!r}?)" if close else ""
        raise UserError(
            f"Unknown gallery command {argv[1]!r}{hint}; valid: {', '.join(COMMANDS.names())}"
        )
    command = COMMANDS.get(argv[1])
    values = flags.FLAGS
    if not values.model_dir:
        raise UserError("--model_dir is required")
    settings = config.from_flags(config.GalleryConfig, values)
    return command(settings, values, list(argv[2:]))


def run() -> None:
    cli.run_stage("gallery", main, positional=True)


if __name__ == "__main__":
    run()
