"""Any TFDS image classification dataset as a prepare source: --source=tfds --tfds_name=NAME.

The dataset is read with its image feature left encoded (tfds.decode.SkipDecoding), so
the original JPEG/PNG bytes reach prepare, which validates and re-encodes them like any
photo. Class names come from the dataset's ClassLabel feature, in label order.

TFDS downloads and prepares a dataset the first time it is used, which needs a network.
Offline, a copy prepared elsewhere (the `<name>/<version>/` folder that `tfds build` or
tfds.load writes) can be copied into --tfds_data_dir (default: TFDS' own data_dir,
~/tensorflow_datasets unless TFDS_DATA_DIR says otherwise).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from lmrec.data.sources.base import Source, SourceItem
from lmrec.errors import UserError
from lmrec.settings import setting

if TYPE_CHECKING:  # annotations only: lmrec.config imports the sources
    from lmrec.config import PrepareConfig

# Text features that hold an example's original file name, tried in this order; when a
# dataset has none, the image id is TFDS' own record id (tfds_id).
_FILE_NAME_FEATURES = ("image/filename", "file_name", "filename", "image/file_name")
_CATALOG = "https://www.tensorflow.org/datasets/catalog/overview"


@dataclass(frozen=True)
class TfdsOptions:
    """--source=tfds's options."""

    tfds_name: str = setting("", "For --source=tfds: a TFDS image classification dataset.")
    tfds_split: str = setting("train", "For --source=tfds: the split to read, e.g. train.")
    tfds_data_dir: str = setting("", "For --source=tfds: TFDS data_dir; empty: TFDS default.")


def source(config: PrepareConfig, options: TfdsOptions) -> Source:
    """Opens split options.tfds_split of TFDS dataset options.tfds_name (download if needed).

    Args:
      config: the prepare settings (unused: a TFDS dataset is named by the options).
      options: tfds_name, tfds_split and tfds_data_dir.

    Returns:
      A streaming Source: items() reads the split in its stored order (files not
      shuffled), so two reads yield the same items.

    Raises:
      UserError: no or an unknown --tfds_name, a dataset without one image and one
        class-label feature, a split it does not have, or a download that failed
        (offline, the message says where to put a prepared copy).
    """
    import tensorflow_datasets as tfds  # optional dependency, only for --source=tfds

    name = options.tfds_name
    if not name:
        raise UserError(
            "--tfds_name is required for --source=tfds, e.g. --tfds_name=tf_flowers "
            f"(image classification datasets are listed at {_CATALOG})"
        )
    try:
        builder = tfds.builder(name, data_dir=options.tfds_data_dir or None)
    except ValueError as error:  # DatasetNotFoundError, or a config the dataset lacks
        raise UserError(
            f"--tfds_name={name!r}: {_first_line(error)} TFDS dataset names are listed by "
            "`python -c 'import tensorflow_datasets as tfds; print(tfds.list_builders())'` "
            f"and at {_CATALOG}; a config is chosen as NAME/CONFIG."
        ) from None
    image_key, label_key = find_image_and_label(name, builder.info)
    if not builder.is_prepared():
        _download_and_prepare(builder, name)

    features = builder.info.features
    id_key = next(
        (
            key
            for key in _FILE_NAME_FEATURES
            if key in features and isinstance(features[key], tfds.features.Text)
        ),
        "tfds_id",
    )
    split = options.tfds_split
    try:
        dataset = builder.as_dataset(
            split=split,
            decoders={image_key: tfds.decode.SkipDecoding()},
            read_config=tfds.ReadConfig(add_tfds_id=True),
            shuffle_files=False,
        )
    except (KeyError, ValueError) as error:
        splits = ", ".join(sorted(builder.info.splits)) or "(none recorded)"
        raise UserError(
            f"--tfds_split={split!r} cannot be read from TFDS dataset {name!r} ({error}); "
            f"its splits: {splits} (slices like train[:10%] work too)"
        ) from None
    class_names = list(features[label_key].names)
    rejected: list[tuple[str, str]] = []
    unlabeled: set[int] = set()  # indexes already in rejected: listed once over both reads

    def items() -> Iterator[SourceItem]:
        # A tf.data.Dataset restarts from its first element on every iteration, in the
        # same order: files are not shuffled and TFDS reads deterministically by default.
        for index, example in enumerate(dataset.as_numpy_iterator()):
            image_id = _text(example.get(id_key)) or f"{split}/{index}"
            label = int(example[label_key])
            if not 0 <= label < len(class_names):
                # Some test splits mark unlabeled examples with -1.
                if index not in unlabeled:
                    unlabeled.add(index)
                    rejected.append((image_id, f"label {label} is not a class (unlabeled)"))
                continue
            yield SourceItem(
                image_id=image_id,
                class_name=class_names[label],
                load=_returning(bytes(example[image_key])),
            )

    return Source(
        name="tfds",
        class_names=class_names,
        items=items,
        rejected=rejected,
        streaming=True,
        info={
            "tfds_name": builder.info.full_name,
            "tfds_split": split,
            "data_dir": builder.data_dir,
            "image_feature": image_key,
            "label_feature": label_key,
            "id_feature": id_key,
        },
    )


def find_image_and_label(name: str, info: Any) -> tuple[str, str]:
    """Picks the (image feature, ClassLabel feature) pair among info's top-level features.

    The dataset's supervised_keys win when they name an Image and a ClassLabel;
    otherwise there must be exactly one of each.

    Raises:
      UserError: naming every feature with its type when no single pair fits.
    """
    import tensorflow_datasets as tfds  # optional dependency, only for --source=tfds

    features = info.features

    def is_a(key: Any, kind: type) -> bool:
        return isinstance(key, str) and key in features and isinstance(features[key], kind)

    image_kind, label_kind = tfds.features.Image, tfds.features.ClassLabel
    supervised = info.supervised_keys
    if isinstance(supervised, tuple) and len(supervised) == 2:
        image_key, label_key = supervised
        if is_a(image_key, image_kind) and is_a(label_key, label_kind):
            return image_key, label_key
    images = [key for key in features if is_a(key, image_kind)]
    labels = [key for key in features if is_a(key, label_kind)]
    if len(images) == 1 and len(labels) == 1:
        return images[0], labels[0]
    described = ", ".join(f"{key}: {type(features[key]).__name__}" for key in features)
    raise UserError(
        f"TFDS dataset {name!r} is not a plain image classification dataset: --source=tfds "
        f"needs one Image and one ClassLabel feature (or supervised_keys naming them), and it "
        f"has {len(images)} and {len(labels)}. Its features: {described}"
    )


def _download_and_prepare(builder: Any, name: str) -> None:
    """builder.download_and_prepare(), with an offline failure turned into what to do."""
    try:
        builder.download_and_prepare()
    except ImportError as error:
        # TFDS 4.9.10 uses importlib_resources without declaring it (tensorflow/datasets#11212).
        raise UserError(
            f"TFDS could not prepare {name!r}: {error}; install it (pip install {error.name})"
        ) from error
    except Exception as error:  # requests, OSError, tfds download errors: all end the same.
        raise UserError(
            f"Could not download and prepare TFDS dataset {name!r} "
            f"({type(error).__name__}: {_first_line(error)}). TFDS needs a network to "
            "download a dataset the first time. Offline, copy the folder that "
            f"`tfds build {name}` (or tfds.load) prepared on a machine with a network to "
            f"{builder.data_dir}, or point --tfds_data_dir at a folder that holds "
            f"{builder.info.full_name}/."
        ) from error


def _returning(data: bytes) -> Callable[[], bytes]:
    """The item's load(): the bytes were already read from the stream."""
    return lambda: data


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return str(value)


def _first_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return lines[0][:300] if lines else ""
