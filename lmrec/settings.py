"""A setting is a config dataclass field that is also a command-line flag.

    seed: int = setting(42, "Seed of the train/val split and of training shuffles.")

The field carries its default and its help (in the field's metadata); the flag's
type follows from the default. One declaration thus gives the config field, the
absl flag, its default and its --help line. A setting that several config
classes hold (seed, batch_size, top_k) is a Shared object called once in each,
so it still has one default and one help.

This module is the bridge from config dataclasses to absl flags: define() turns
fields into flags, parse() reads arguments for some config classes while
accepting, and ignoring, the flags that belong to other classes (so every
command reads the same flagfiles), and values() builds a config back from
parsed flags. lmrec.flags says which classes each command has.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterable
from typing import Any

from absl import flags

_DEFINE = {
    str: flags.DEFINE_string,
    int: flags.DEFINE_integer,
    float: flags.DEFINE_float,
    bool: flags.DEFINE_boolean,
}
HELP = "help"  # the metadata key of a setting's help text


def setting(default: str | int | float | bool, help: str) -> Any:
    """A dataclass field with a default and the help text of its flag."""
    if type(default) not in _DEFINE:
        raise TypeError(f"a setting's default is a str, int, float or bool, got {default!r}")
    return dataclasses.field(default=default, metadata={HELP: help})


@dataclasses.dataclass(frozen=True)
class Shared:
    """One setting held by several config classes: `seed: int = SEED()` in each."""

    default: str | int | float | bool
    help: str

    def __call__(self) -> Any:
        return setting(self.default, self.help)


def flag_fields(cls: type) -> list[dataclasses.Field]:
    """The fields of a config class that are flags (declared with setting())."""
    return [f for f in dataclasses.fields(cls) if HELP in f.metadata]


def flag_names(classes: Iterable[type]) -> set[str]:
    return {f.name for cls in classes for f in flag_fields(cls)}


def field_default(cls: type, name: str) -> Any:
    """The default of one field of a config class."""
    for field in dataclasses.fields(cls):
        if field.name == name:
            return field.default
    raise KeyError(f"{cls.__name__} has no field {name!r}")


def define(
    fields: Iterable[dataclasses.Field], flag_values: flags.FlagValues, module_name: str
) -> None:
    """Defines one flag per field on flag_values, grouped under module_name in --help.

    A name already defined with the same default and help (a Shared setting) is kept.

    Raises:
      ValueError: two fields of one name differ in default or help.
    """
    for field in fields:
        help_text = field.metadata[HELP]
        if field.name in flag_values:
            existing = flag_values[field.name]
            if (existing.default, existing.help) != (field.default, help_text):
                raise ValueError(
                    f"--{field.name} is declared twice with different defaults or help; "
                    "declare it once with settings.Shared"
                )
            continue
        _DEFINE[type(field.default)](
            field.name, field.default, help_text, flag_values=flag_values, module_name=module_name
        )


def with_others_accepted(argv: list[str], others: Iterable[str]) -> list[str]:
    """argv with --undefok naming others: absl then drops those flags instead of failing."""
    names = sorted(others)
    if not names:
        return list(argv)
    return [argv[0], f"--undefok={','.join(names)}", *argv[1:]]


def parse(
    args: list[str], fields: Iterable[dataclasses.Field], others: Iterable[str] = ()
) -> flags.FlagValues:
    """Parses flag arguments into a new FlagValues holding one flag per field.

    Args:
      args: e.g. ["--flagfile=configs/demo.cfg", "--epochs_frozen=1"].
      fields: the settings to define.
      others: names of lmrec flags that other commands define: accepted and ignored.

    Raises:
      absl.flags.Error: an unknown or malformed flag (the message names it and
        suggests the closest defined one).
    """
    flag_values = flags.FlagValues()
    define(fields, flag_values, module_name="lmrec")
    flag_values(with_others_accepted(["lmrec", *args], others))
    return flag_values


def flag_value(flag_values: flags.FlagValues, name: str) -> Any:
    """A parsed flag's value; a string starting with ~ is expanded to the home folder,
    since the shell leaves the ~ of --input_dir=~/Pictures as it is."""
    value = flag_values[name].value
    if isinstance(value, str) and value.startswith("~"):
        return os.path.expanduser(value)
    return value


def values(cls: type, flag_values: flags.FlagValues, **extra: Any) -> Any:
    """Builds a config class from parsed flags of the same names (plus extra fields)."""
    return cls(**{f.name: flag_value(flag_values, f.name) for f in flag_fields(cls)}, **extra)
