"""Which flags each `python -m lmrec.<stage>` command defines, from lmrec.config's fields.

A flag is a config field declared with lmrec.settings.setting(); its default and
help live there. STAGES lists, per command, the config classes (or the few
fields of a class) it reads, so `python -m lmrec.predict --help` shows predict's
flags only. Every command still reads every lmrec flagfile (configs/common.cfg,
or the flags.cfg a training run wrote into its model_dir): a flag that another
stage defines is accepted and ignored, while a name no stage defines is an
error that names it and suggests the closest flag. Only lmrec.config turns
parsed values into dataclasses; no library module reads FLAGS.

Notebooks and tests parse without touching the global FLAGS:
    values = lmrec.flags.parse(["--flagfile=configs/demo.cfg", "--epochs_frozen=1"])
    values = lmrec.flags.parse(["--model=export/demo"], stage="predict")
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable

from absl import flags

from lmrec import settings
from lmrec.config import (
    ALL_CONFIG_CLASSES,
    EXPERIMENT_CLASSES,
    SOURCE_OPTION_CLASSES,
    ClassifierConfig,
    CommandConfig,
    CompareConfig,
    CopyConfigsConfig,
    DataConfig,
    EvaluateConfig,
    ExportConfig,
    GalleryConfig,
    GeoConfig,
    GradcamConfig,
    LrFindConfig,
    PredictConfig,
    PrepareConfig,
    TrainConfig,
)
from lmrec.data.sources.gldv2 import Gldv2Options
from lmrec.registry import Registry


@dataclasses.dataclass(frozen=True)
class Part:
    """A config class whose flags a stage defines: all of them, or only `names`."""

    config_class: type
    names: tuple[str, ...] = ()

    def fields(self) -> list[dataclasses.Field]:
        fields = settings.flag_fields(self.config_class)
        if not self.names:
            return fields
        missing = set(self.names) - {f.name for f in fields}
        if missing:
            raise KeyError(f"{self.config_class.__name__} has no setting {sorted(missing)}")
        return [f for f in fields if f.name in self.names]


def _parts(*entries: type | Part) -> tuple[Part, ...]:
    """Each stage also takes --quiet (CommandConfig)."""
    return tuple(e if isinstance(e, Part) else Part(e) for e in (*entries, CommandConfig))


_MODEL_DIR = Part(TrainConfig, ("model_dir",))

# stage -> what its main() reads, in --help order.
STAGES: Registry[tuple[Part, ...]] = Registry(
    "stage",
    {
        "prepare": _parts(PrepareConfig, *SOURCE_OPTION_CLASSES),
        "train": _parts(*EXPERIMENT_CLASSES),
        "evaluate": _parts(
            _MODEL_DIR, EvaluateConfig, ClassifierConfig, Part(DataConfig, ("batch_size",))
        ),
        "export": _parts(
            _MODEL_DIR, ExportConfig, ClassifierConfig, Part(EvaluateConfig, ("data",))
        ),
        "predict": _parts(
            PredictConfig, GeoConfig, ClassifierConfig, Part(EvaluateConfig, ("reject_threshold",))
        ),
        "gradcam": _parts(_MODEL_DIR, GradcamConfig),
        "gallery": _parts(
            _MODEL_DIR,
            GalleryConfig,
            Part(EvaluateConfig, ("data", "distractors")),
            Part(DataConfig, ("batch_size",)),
        ),
        # Each entry of lmrec.compare and lmrec.lr_find is a whole training config.
        "compare": _parts(*EXPERIMENT_CLASSES, CompareConfig),
        "lr_find": _parts(*EXPERIMENT_CLASSES, LrFindConfig),
        "copy_configs": _parts(CopyConfigsConfig),
        # scripts/download_gldv2.py: the GLDv2 selection lmrec.prepare will read.
        "download_gldv2": _parts(Part(PrepareConfig, ("seed",)), Gldv2Options),
    },
)


def fields(stage: str | None = None) -> list[dataclasses.Field]:
    """The settings a stage defines as flags; every lmrec setting when stage is None."""
    parts = STAGES.get(stage) if stage else tuple(Part(cls) for cls in ALL_CONFIG_CLASSES)
    return [field for part in parts for field in part.fields()]


def all_names() -> set[str]:
    """The name of every lmrec flag, whichever stage defines it."""
    return settings.flag_names(ALL_CONFIG_CLASSES)


def others(stage: str | None, extra: Iterable[dataclasses.Field] = ()) -> set[str]:
    """The lmrec flags a stage does not define: accepted in its flagfiles, and ignored."""
    own = {field.name for field in (*fields(stage), *extra)}
    return all_names() - own


def define(
    stage: str,
    flag_values: flags.FlagValues = flags.FLAGS,
    module_name: str = "lmrec",
    extra: Iterable[dataclasses.Field] = (),
) -> None:
    """Defines a stage's flags (plus extra fields) on flag_values.

    Args:
      stage: a STAGES name.
      flag_values: where to define them; the global FLAGS for a command.
      module_name: what absl groups them under; the main module for a command, so
        that --help lists them.
      extra: settings of a script's own (e.g. scripts/download_gldv2.py's --keep_tars).
    """
    settings.define([*fields(stage), *extra], flag_values, module_name)


def parse(args: list[str], stage: str | None = None) -> flags.FlagValues:
    """Parses flag arguments (e.g. ["--flagfile=configs/demo.cfg"]) into a new FlagValues.

    Args:
      args: flags and flagfiles.
      stage: define only this stage's flags (other lmrec flags are accepted and
        ignored); None defines every lmrec flag.

    Raises:
      absl.flags.Error: an unknown or malformed flag (the message names it).
    """
    return settings.parse(args, fields(stage), others(stage))
