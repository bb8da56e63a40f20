"""Frozen dataclasses that carry every setting of every stage.

Library code takes these, never absl FLAGS. Each field name is also the name of
exactly one command-line flag (defined in lmrec.flags, with its default read
from here), so a config converts to a re-runnable flagfile and back without a
mapping table. A field that two stages share (seed, batch_size, top_k) is still
one flag.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from typing import Any


@dataclasses.dataclass(frozen=True)
class PrepareConfig:
    """How photos become TFRecord shards (lmrec.prepare)."""

    source: str = "folder"
    input_dir: str = ""
    name: str = ""
    output_dir: str = "tf_records"
    val_fraction: float = 0.2
    seed: int = 42
    max_image_side: int = 800
    images_per_shard: int = 1000
    overwrite: bool = False
    demo_images_per_class: int = 150
    demo_image_size: int = 128
    num_workers: int = 0  # 0: one worker process per CPU core.
    runner: str = "local"  # local (worker processes) | beam (Apache Beam pipeline)
    beam_options: str = ""  # e.g. "--runner=DataflowRunner --project=p --region=r"
    # Google Landmarks v2 (--source=gldv2); selection flags also serve scripts/download_gldv2.py.
    gldv2_dir: str = ""  # holds train.csv / train_clean.csv, train_label_to_category.csv, train/
    gldv2_csv: str = "train"  # train (id,url,landmark_id) | train_clean (landmark_id,images)
    min_images_per_class: int = 0
    max_images_per_class: int = 0  # 0: no cap; else a seeded sample of this many per class.
    num_classes: int = 0  # 0: every class that passes the other selections.
    class_selection: str = "most"  # most (populous) | random (seeded) for --num_classes
    classes: str = ""  # comma-separated landmark ids; overrides the count-based selection.
    gldv2_url: str = "https://s3.amazonaws.com/google-landmark"
    gldv2_tars: str = "all"  # tar shards to download: all | e.g. 0-9,17
    download_jobs: int = 4
    # TFDS (--source=tfds) and existing TFRecords (--source=tfrecords).
    tfds_name: str = ""
    tfds_split: str = "train"
    tfds_data_dir: str = ""
    tfrecords_label_offset: int = 0  # subtracted from stored labels (1 for 1-based sets).


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """How prepared shards are read for training and evaluation."""

    data_dir: str = ""
    image_size: int = 0  # 0: the backbone's default size.
    batch_size: int = 32
    augment: str = "light"
    mixing: str = "none"
    balance: str = "none"  # none | class_weights | resample, for long-tailed subsets
    shuffle_buffer: int = 2048
    seed: int = 42


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Which network: backbone + head."""

    backbone: str = "xception"
    weights: str = "imagenet"  # imagenet | none | path to a weights file
    head: str = "gap_dense512"
    dense_units: int = 512
    dropout: float = 0.3
    bilinear_dim: int = 8192  # Tensor Sketch dimension of the bilinear heads
    # The loss decides the head's last layer (lmrec.losses), so it is part of the model.
    loss: str = "softmax"  # softmax | focal | arcface | subcenter_arcface
    arcface_scale: float = 30.0  # s of the cosine classifier's logits s·cos θ
    subcenters: int = 3  # weights per class, for --loss=subcenter_arcface


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """The two-phase schedule and where its results go."""

    model_dir: str = ""
    epochs_frozen: int = 3
    epochs_finetune: int = 5
    lr_frozen: float = 1e-3
    lr_finetune: float = 1e-4
    lr_schedule: str = "cosine"  # per phase: constant | step | cosine | cosine_restarts
    lr_step_epochs: float = 0.0  # step: epochs between drops; 0: drops at 1/3 and 2/3 of a phase
    lr_decay_factor: float = 0.1  # step: the rate is multiplied by this at each drop
    restart_epochs: float = 1.0  # cosine_restarts: length of the first cycle
    restart_multiplier: float = 2.0  # cosine_restarts: each cycle is this many times longer
    warmup_epochs: float = 0.0  # phase 2 starts with a linear warm-up from 0 over this many
    layer_lr_ratio: float = 1.0  # phase 2: the backbone's first layer's rate / lr_finetune
    optimizer: str = "adam"  # adam | adamw | rmsprop | sgd (Nesterov)
    momentum: float = 0.9  # sgd's momentum
    weight_decay: float = 0.0  # decoupled weight decay for adamw and sgd
    ema_momentum: float = 0.0  # > 0: validate, checkpoint and export an EMA of the weights
    select_epoch: str = "best"  # best (val accuracy) | last: the epoch evaluated and exported
    unfreeze_from: str = ""  # "" unfreezes the whole backbone in phase 2.
    freeze_layers: int = 0  # the first N backbone layers stay frozen in phase 2 (seed: 85)
    strategy: str = "auto"  # auto | default | mirrored | multi_worker (TF_CONFIG) | tpu
    lr_scaling: str = "none"  # none | linear | sqrt: rates x replicas (or its root)
    sync_batchnorm: bool = True  # with > 1 replica, BatchNorm statistics over the global batch
    mixed_precision: str = "none"  # none | auto (float16 on a GPU) | float16 | bfloat16
    jit_compile: str = "auto"  # auto (Keras decides: never on CPU-only machines) | true | false
    steps_per_epoch: int = 0  # 0: one pass over the training shards.
    checkpoint_every_steps: int = 0  # resume checkpoints within epochs, every N steps (0: off)
    checkpoint_every_seconds: float = 600.0  # ... and at least this often (0: off)
    checkpoint_min_seconds: float = 60.0  # epoch ends save only if the last save is older
    early_stopping_patience: int = 0  # 0: off; else epochs without improvement, per phase
    early_stopping_metric: str = "val_accuracy"  # [val_]loss | [val_]accuracy | [val_]top5
    tensorboard_images: int = 8  # validation photos drawn with their predictions ...
    tensorboard_images_every: int = 5  # ... every N epochs and at each phase's end
    # Phase 1 on the frozen backbone's cached features (lmrec.feature_cache).
    cache_frozen_features: str = "auto"  # auto | on | off
    feature_cache_passes: int = 2  # augmented passes cached; epoch e trains on pass e mod K
    feature_cache_dir: str = ""  # "": in memory if it fits in half the free memory, else model_dir
    label_smoothing: float = 0.1
    arcface_margin: float = 0.5  # m, radians, added to the target angle (training only)
    focal_gamma: float = 2.0
    prepare_if_missing: bool = False
    evaluate_after: bool = True
    export_after: bool = True


@dataclasses.dataclass(frozen=True)
class ExportConfig:
    """Where and how the SavedModel for TF Serving is written."""

    export_dir: str = "export"
    model_name: str = ""  # "": the model_dir's folder name.
    version: int = 0  # 0: one more than the newest existing version.
    top_k: int = 5
    tflite: str = ""  # comma-separated: float32,float16,int8 ("": no TFLite files)
    tflite_check_images: int = 64  # held-out images each TFLite file is compared on


@dataclasses.dataclass(frozen=True)
class EvaluateConfig:
    """What lmrec.evaluate (and the evaluation at the end of training) measures on."""

    data: str = ""  # "": the validation shards the model was trained with.
    distractors: str = ""  # a folder of photos without landmarks
    reject_threshold: float = 0.0  # top probability below which the answer is "no landmark"
    cam_crop: bool = False  # also classify the Grad-CAM crop and report its effect


@dataclasses.dataclass(frozen=True)
class PredictConfig:
    """How lmrec.predict tags photos."""

    model: str = ""
    output: str = "tags.csv"
    top_k: int = 5
    batch_size: int = 32
    min_score: float = 0.0  # labels scoring below this are not written (CSV, JSON or XMP)
    xmp: bool = False  # write an XMP sidecar per photo with the landmark as a keyword
    engine: str = "auto"  # auto | savedmodel | tflite | tflite-int8 (files beside the export)
    # What one photo may cost (lmrec.data.images; prepare reads with the same defaults).
    max_file_mb: int = 128  # larger files are refused from their size, unread
    max_megapixels: int = 100  # pixels decoded (after a JPEG's DCT scaling), from the header
    decode_memory_mb: int = 512  # estimated memory of the photos decoding at once


@dataclasses.dataclass(frozen=True)
class GradcamConfig:
    """What lmrec.gradcam explains and where its pictures go."""

    class_name: str = ""  # "": each photo's predicted class.
    gradcam_dir: str = ""  # "": <model_dir>/gradcam


@dataclasses.dataclass(frozen=True)
class CompareConfig:
    """What lmrec.compare trains side by side (each entry is a flagfile plus overrides)."""

    models: str = ""  # comma-separated: "a.cfg,a.cfg --head=gem,b.cfg --loss=arcface"
    compare_dir: str = "runs/compare"


@dataclasses.dataclass(frozen=True)
class LrFindConfig:
    """The learning-rate range test of lmrec.lr_find."""

    lr_find_phase: str = "finetune"  # frozen | finetune: which phase's rate to find
    lr_find_min: float = 1e-7
    lr_find_max: float = 1.0
    lr_find_steps: int = 100
    lr_find_dir: str = ""  # "": --model_dir


@dataclasses.dataclass(frozen=True)
class ExperimentConfig:
    """Everything lmrec.train resolves and writes into model_dir."""

    prepare: PrepareConfig = PrepareConfig()
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()
    evaluate: EvaluateConfig = EvaluateConfig()
    export: ExportConfig = ExportConfig()

    def replace(self, **sections: Any) -> ExperimentConfig:
        """Returns a copy with some fields changed, e.g. replace(train={"epochs_frozen": 1})."""
        changed = {}
        for section, values in sections.items():
            current = getattr(self, section)
            changed[section] = dataclasses.replace(current, **values)
        return dataclasses.replace(self, **changed)

    def to_dict(self) -> dict[str, dict[str, Any]]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, values: Mapping[str, Mapping[str, Any]]) -> ExperimentConfig:
        """Builds a config from to_dict() output; unknown keys raise ValueError."""
        sections = {}
        for field in dataclasses.fields(cls):
            sections[field.name] = _section_from_mapping(
                _SECTIONS[field.name], values.get(field.name, {})
            )
        unknown = set(values) - set(sections)
        if unknown:
            raise ValueError(
                f"Unknown config sections {sorted(unknown)}; known: {sorted(sections)}"
            )
        return cls(**sections)

    def to_flagfile(self) -> str:
        """Renders the config as absl flagfile lines (one --name=value per field)."""
        seen: dict[str, Any] = {}
        for section in dataclasses.fields(self):
            for name, value in dataclasses.asdict(getattr(self, section.name)).items():
                seen.setdefault(name, value)
        return "".join(f"--{name}={_flag_value(value)}\n" for name, value in seen.items())


_SECTIONS = {
    "prepare": PrepareConfig,
    "data": DataConfig,
    "model": ModelConfig,
    "train": TrainConfig,
    "evaluate": EvaluateConfig,
    "export": ExportConfig,
}

ALL_CONFIG_CLASSES = (
    PrepareConfig,
    DataConfig,
    ModelConfig,
    TrainConfig,
    ExportConfig,
    EvaluateConfig,
    PredictConfig,
    CompareConfig,
    LrFindConfig,
    GradcamConfig,
)


def _flag_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _section_from_mapping(section_cls: type, values: Mapping[str, Any]):
    names = {f.name for f in dataclasses.fields(section_cls)}
    unknown = set(values) - names
    if unknown:
        raise ValueError(
            f"Unknown {section_cls.__name__} fields {sorted(unknown)}; known: {sorted(names)}"
        )
    return section_cls(**values)


def field_default(section_cls: type, name: str) -> Any:
    """The default of one field; lmrec.flags uses it so defaults live in one place."""
    for field in dataclasses.fields(section_cls):
        if field.name == name:
            return field.default
    raise KeyError(f"{section_cls.__name__} has no field {name!r}")


def from_flags(section_cls: type, flag_values) -> Any:
    """Builds one config dataclass from parsed absl flag values (same names)."""
    return section_cls(
        **{f.name: flag_values[f.name].value for f in dataclasses.fields(section_cls)}
    )


def experiment_from_flags(flag_values) -> ExperimentConfig:
    """Builds the ExperimentConfig lmrec.train runs from parsed absl flags."""
    return ExperimentConfig(
        **{name: from_flags(cls, flag_values) for name, cls in _SECTIONS.items()}
    )


def experiment_from_flagfile(path: str, *overrides: str) -> ExperimentConfig:
    """Reads an absl flagfile (plus "--name=value" overrides) without touching global FLAGS.

    For notebooks: experiment_from_flagfile("configs/demo.cfg", "--epochs_finetune=2").
    """
    from lmrec import flags as lmrec_flags

    return experiment_from_flags(lmrec_flags.parse([f"--flagfile={path}", *overrides]))


def load_experiment(path: str) -> ExperimentConfig:
    """Reads the config.json that lmrec.train wrote into a model_dir."""
    with open(path, encoding="utf-8") as f:
        return ExperimentConfig.from_dict(json.load(f))
