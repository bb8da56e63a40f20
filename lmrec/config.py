"""Frozen dataclasses that carry every setting of every stage.

Library code takes these, never absl FLAGS. Each field is declared with
lmrec.settings.setting(default, help), so it is also one command-line flag
whose default and help live here; lmrec.flags says which classes each command
defines flags for. A setting that several classes hold (seed, batch_size, top_k,
overwrite) is one Shared object, so it has one default and one help, and is one
flag. A config converts to a re-runnable flagfile and back without a mapping
table.

A data source's own settings (e.g. --demo_images_per_class) are declared in its
module (lmrec.data.sources); PrepareConfig.source_options holds the chosen
source's values by name.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from typing import Any

from absl import flags as absl_flags

from lmrec import geo_prior as geo_priors
from lmrec import knn, locations, settings
from lmrec.data import images
from lmrec.data.sources import SOURCES
from lmrec.settings import Shared, setting

SEED = Shared(42, "Seed of the train/val split and of training shuffles.")
BATCH_SIZE = Shared(
    32,
    "Photos per batch on each replica; training's global batch is this x replicas.",
)
TOP_K = Shared(5, "Labels returned per image.")
OVERWRITE = Shared(
    False,
    "Replace what is already there: a prepared dataset (lmrec.prepare), configs that differ "
    "from lmrec's (lmrec.copy_configs).",
)


@dataclasses.dataclass(frozen=True)
class PrepareConfig:
    """How photos become TFRecord shards (lmrec.prepare).

    source_options holds the chosen source's own settings by name (e.g.
    {"demo_images_per_class": 5} for --source=demo); names it leaves out keep
    their defaults. lmrec.data.sources.options_of() checks and types them.
    """

    source: str = setting(
        "folder",
        "Where photos come from: demo | folder | gldv2 | tfds | tfrecords.",
    )
    input_dir: str = setting(
        "",
        "For --source=folder: a folder with one subfolder per class (any nesting below it).",
    )
    name: str = setting("", "Dataset name; shards go to <output_dir>/<name>/. Default: the source.")
    output_dir: str = setting("tf_records", "Parent folder of prepared datasets.")
    val_fraction: float = setting(
        0.2,
        "Fraction of each class held out for validation (every class keeps >= 1 training image).",
    )
    seed: int = SEED()
    max_image_side: int = setting(
        800,
        "Photos whose longer side exceeds this are downscaled before storing (0: keep size).",
    )
    images_per_shard: int = setting(1000, "Images per TFRecord shard.")
    overwrite: bool = OVERWRITE()
    num_workers: int = setting(0, "Processes writing shards in parallel; 0: one per CPU core.")
    runner: str = setting(
        "local",
        "local (worker processes on this machine) | beam (the same shard writer as an Apache Beam"
        " pipeline; DirectRunner unless --beam_options name another runner).",
    )
    beam_options: str = setting(
        "",
        "Apache Beam pipeline options for --runner=beam, e.g. '--runner=DataflowRunner "
        "--project=P --region=R --temp_location=gs://B/tmp'.",
    )
    min_located_photos: int = setting(
        locations.DEFAULT_MIN_LOCATED_PHOTOS,
        "A class gets a location in labels.json (median and spread of its training photos' "
        "EXIF GPS) when at least this many of them have GPS.",
    )
    landmark_locations: str = setting(
        "",
        "CSV of landmark locations for labels.json (name or landmark_id, latitude, longitude, "
        "optional radius_m); its rows replace the locations from photos. "
        "scripts/fetch_landmark_locations.py writes one for GLDv2.",
    )
    source_options: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    @classmethod
    def build(cls, **values: Any) -> PrepareConfig:
        """A PrepareConfig from flag names: its own fields, and the source's options
        (which go into source_options), e.g. build(source="demo", demo_image_size=64)."""
        return cls(**_prepare_values(cls(), values))


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """How prepared shards are read for training and evaluation."""

    data_dir: str = setting("", "Prepared dataset folder (train-*/val-* shards).")
    image_size: int = setting(0, "Model input side in pixels; 0: backbone default.")
    batch_size: int = BATCH_SIZE()
    augment: str = setting(
        "light",
        "Training augmentation policy: none | light | shift_jitter | randaugment.",
    )
    mixing: str = setting("none", "Mix training batches and their labels: none | mixup | cutmix.")
    balance: str = setting(
        "none",
        "Long-tailed classes: none | class_weights (loss weights) | resample (balanced sampling).",
    )
    shuffle_buffer: int = setting(2048, "Examples in the shuffle buffer.")
    seed: int = SEED()


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Which network: backbone + head; the loss decides the head's last layer."""

    backbone: str = setting(
        "xception",
        "xception | inceptionv3 | resnet50 | efficientnetb7 | efficientnet_lite0|1|2 | squeezenet"
        " | resnet18 | resnet34 | baseline, or any keras.applications model by its lower-case "
        "class name (densenet201, mobilenetv2, efficientnetv2s, convnexttiny, ...).",
    )
    weights: str = setting(
        "imagenet",
        "imagenet (Keras download) | none (random init) | path to a Keras weights file.",
    )
    head: str = setting(
        "gap_dense512",
        "Classification head: gap_dense512 | bilinear | gem | spatial_attention | self_attention "
        "| bilinear_self_attention.",
    )
    dense_units: int = setting(512, "Width of the head's hidden Dense layer.")
    dropout: float = setting(0.3, "Dropout rate before the softmax layer.")
    bilinear_dim: int = setting(
        8192,
        "Output dimension of compact bilinear pooling (Tensor Sketch) in the bilinear heads.",
    )
    loss: str = setting(
        "softmax",
        "Training loss: softmax (cross-entropy) | focal (down-weights easy examples, for long "
        "tails) | arcface | subcenter_arcface (additive angular margin on a cosine classifier). "
        "The model outputs softmax probabilities with every loss.",
    )
    arcface_scale: float = setting(
        30.0,
        "ArcFace scale s: the cosine classifier's logits are s*cos(angle), so s bounds them; "
        "about 30 for tens to thousands of classes.",
    )
    subcenters: int = setting(
        3,
        "Weights per class for --loss=subcenter_arcface (each class scores its closest one); "
        "--loss=arcface always has 1.",
    )


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """The two-phase schedule and where its results go."""

    model_dir: str = setting("", "Run folder: flags, labels, checkpoints, history, logs, report.")
    epochs_frozen: int = setting(3, "Phase 1 epochs: head only, backbone frozen.")
    epochs_finetune: int = setting(5, "Phase 2 epochs: backbone unfrozen.")
    lr_frozen: float = setting(0.001, "Phase 1 learning rate.")
    lr_finetune: float = setting(0.0001, "Phase 2 learning rate (lower, to keep features).")
    lr_schedule: str = setting(
        "cosine",
        "Learning-rate schedule within each phase, from the phase's rate: constant | step (x "
        "--lr_decay_factor every --lr_step_epochs) | cosine (decays to 0 by the phase's last "
        "step) | cosine_restarts (SGDR: cosine cycles back to the peak, the first "
        "--restart_epochs long, each next --restart_multiplier times longer).",
    )
    lr_step_epochs: float = setting(
        0.0,
        "For --lr_schedule=step: epochs between drops (fractions allowed); 0: drops at 1/3 and "
        "2/3 of each phase.",
    )
    lr_decay_factor: float = setting(0.1, "For --lr_schedule=step: factor of each drop, in (0, 1].")
    restart_epochs: float = setting(
        1.0,
        "For --lr_schedule=cosine_restarts: epochs of the first cycle (fractions allowed).",
    )
    restart_multiplier: float = setting(
        2.0,
        "For --lr_schedule=cosine_restarts: each cycle is this many times longer than the last "
        "(>= 1).",
    )
    warmup_epochs: float = setting(
        0.0,
        "Phase 2 (fine-tuning, or all of a from-scratch run) first raises its rate linearly from "
        "0 over this many epochs, then runs --lr_schedule over the rest; 0: no warm-up. Phase 1 "
        "(a new head on a frozen backbone) needs none.",
    )
    layer_lr_ratio: float = setting(
        1.0,
        "Phase 2 discriminative learning rates (fastai's slice(lo, hi), layer-wise decay): the "
        "backbone's first layer trains at this fraction of --lr_finetune, rising geometrically "
        "with depth to the full rate at its top and in the head; in (0, 1], 1: one rate for all. "
        "E.g. 0.03 with a 3x higher --lr_finetune.",
    )
    optimizer: str = setting(
        "adam",
        "adam | adamw | rmsprop | sgd (Nesterov, --momentum); a fresh one per phase.",
    )
    momentum: float = setting(0.9, "Momentum of --optimizer=sgd, in [0, 1).")
    weight_decay: float = setting(
        0.0,
        "Decoupled weight decay for adamw, rmsprop and sgd (0: none).",
    )
    ema_momentum: float = setting(
        0.0,
        "If > 0 (e.g. 0.98), keep an exponential moving average of the weights and use it for "
        "validation, checkpoints and export: steadier than the last step's weights.",
    )
    select_epoch: str = setting(
        "best",
        "Which epoch's weights are evaluated and exported: best (highest validation accuracy) or "
        "last. With a small validation split, picking by it is noisy, and the last epoch of a "
        "decayed schedule is often the better model.",
    )
    unfreeze_from: str = setting(
        "",
        "Phase 2 unfreezes the backbone from this layer name (or name prefix, e.g. block13) to "
        "the top; empty: the whole backbone. BatchNorm of pretrained backbones stays frozen.",
    )
    freeze_layers: int = setting(
        0,
        "Phase 2 keeps the backbone's first N layers (backbone.layers[:N], as in Keras' "
        "fine-tuning guide) frozen; 0: none. With --unfreeze_from, the later of the two starting "
        "points wins.",
    )
    strategy: str = setting(
        "auto",
        "tf.distribute strategy: auto (mirrored over GPUs if any, else default) | default | "
        "mirrored (all local GPUs) | multi_worker (MultiWorkerMirroredStrategy over the machines "
        "in the TF_CONFIG environment variable; start the same command on each) | tpu "
        "(Colab/Cloud TPU; data on gs://). --batch_size is per replica.",
    )
    lr_scaling: str = setting(
        "none",
        "How the learning rates follow the global batch (--batch_size x replicas): none | linear "
        "(x replicas, Goyal et al.; for SGD) | sqrt (x sqrt(replicas); for Adam-type).",
    )
    sync_batchnorm: bool = setting(
        True,
        "With more than one replica, BatchNorm layers that train compute their batch statistics "
        "over the global batch (all replicas and workers), so every worker ends with the same "
        "moving statistics; false: each replica uses its own slice.",
    )
    mixed_precision: str = setting(
        "none",
        "Training precision: none (float32) | auto (float16 on a GPU, else float32) | float16 "
        "(mixed_float16, loss scaling included) | bfloat16 (mixed_bfloat16: TPUs, recent GPUs and"
        " CPUs with bfloat16 units; slow on most CPUs). Variables, softmax and loss stay float32;"
        " evaluation and export run in float32.",
    )
    jit_compile: str = setting(
        "auto",
        "XLA compilation of the training step: auto (Keras decides; off on CPU-only machines) | "
        "true | false. On CPU, XLA slows the EfficientNets several-fold (a warning says so).",
    )
    steps_per_epoch: int = setting(0, "Training steps per epoch; 0: one pass over the data.")
    checkpoint_every_steps: int = setting(
        0,
        "Besides every epoch end, save the resume checkpoint (model_dir/resume: weights, "
        "optimizer state, position) every N training steps; 0: off. A killed run started again "
        "with the same command continues from the last one.",
    )
    checkpoint_every_seconds: float = setting(
        600.0,
        "Save the resume checkpoint within an epoch at least this often (seconds); 0: only at "
        "epoch ends and per --checkpoint_every_steps.",
    )
    checkpoint_min_seconds: float = setting(
        60.0,
        "An epoch end saves the resume checkpoint (and best/last.weights.h5) only when the last "
        "save is at least this old (seconds); a phase's last epoch always saves. Short epochs "
        "then do not spend more time saving than training; a kill loses at most this much. 0: "
        "every epoch end.",
    )
    early_stopping_patience: int = setting(
        0,
        "End a phase after this many epochs without improvement of --early_stopping_metric (phase"
        " 1 then moves on to phase 2); 0: off. --select_epoch still picks the weights.",
    )
    early_stopping_metric: str = setting(
        "val_accuracy",
        "What --early_stopping_patience watches: val_accuracy | val_loss | val_top5, or the "
        "training loss | accuracy | top5 (the val_ ones fall back to these without a val split).",
    )
    tensorboard_images: int = setting(
        8,
        "Validation photos drawn in TensorBoard (Images tab), titled with the true and predicted "
        "class and its probability; 0: none.",
    )
    tensorboard_images_every: int = setting(
        5,
        "Draw the --tensorboard_images every N epochs and after each phase's last epoch (drawing "
        "takes about half a second).",
    )
    cache_frozen_features: str = setting(
        "auto",
        "Phase 1 on cached features: the frozen backbone runs once over the images (or "
        "--feature_cache_passes augmented passes) and the head trains on its stored outputs: auto"
        " (when that is exact and saves time; the run says why not otherwise) | on (an error if "
        "it cannot be exact, e.g. with --mixing) | off. Phase 2 always reads images.",
    )
    feature_cache_passes: int = setting(
        2,
        "With --augment other than none: augmented passes over the training images that phase 1's"
        " cache holds (at most --epochs_frozen); epoch e trains on pass e mod this. More passes "
        "keep more of the augmentation and cost one backbone pass each.",
    )
    feature_cache_dir: str = setting(
        "",
        "Where phase 1's cached features go: empty keeps them in memory if they fit in half the "
        "free memory, else in a folder in --model_dir; a folder puts them on disk there. Files "
        "are deleted when phase 1 ends.",
    )
    label_smoothing: float = setting(
        0.1,
        "Label smoothing of the cross-entropy (of every --loss), in [0, 1).",
    )
    arcface_margin: float = setting(
        0.5,
        "ArcFace additive angular margin m in radians, in [0, pi/2): training makes the true "
        "class win by m in angle. 0 is softmax cross-entropy on the cosine logits.",
    )
    focal_gamma: float = setting(
        2.0,
        "Focal loss exponent: each example's loss is scaled by (1 - p_true)^gamma; 0 is the "
        "cross-entropy.",
    )
    prepare_if_missing: bool = setting(
        False,
        "If data_dir holds no shards, run lmrec.prepare with this config's prepare flags first.",
    )
    evaluate_after: bool = setting(
        True,
        "Evaluate the best model after training (on --data if given, else the val split).",
    )
    export_after: bool = setting(True, "Export a SavedModel after training.")


@dataclasses.dataclass(frozen=True)
class ExportConfig:
    """Where and how the SavedModel for TF Serving is written."""

    export_dir: str = setting("export", "Parent of <model_name>/<version>/ SavedModels.")
    model_name: str = setting("", "TF Serving model name; default: the model_dir's folder name.")
    version: int = setting(0, "Export version; 0: next free number. Never overwrites.")
    top_k: int = TOP_K()
    tflite: str = setting(
        "",
        "For lmrec.export: also write TFLite files, comma-separated: float32,float16,int8 "
        "(dynamic-range), to <export_dir>/<model_name>_tflite/<version>/; each is checked against"
        " the SavedModel on held-out images (--data, default: the validation shards). Empty: "
        "none.",
    )
    tflite_check_images: int = setting(
        64,
        "For --tflite: how many held-out images each TFLite file is compared on.",
    )


@dataclasses.dataclass(frozen=True)
class EvaluateConfig:
    """What lmrec.evaluate (and the evaluation at the end of training) measures on."""

    data: str = setting(
        "",
        "What to evaluate on: a prepared dataset folder (its val shards), a glob of shards, or an"
        " image folder with one subfolder per class. Default: the validation shards used in "
        "training.",
    )
    distractors: str = setting(
        "",
        "For lmrec.evaluate: a folder of photos without landmarks (people, gear, indoor shots), "
        "evaluated as non-landmark queries: GAP is reported with and without them. For "
        "lmrec.gallery add: such photos (a folder or file, more may follow as arguments), added "
        "as 'no landmark' neighbours.",
    )
    reject_threshold: float = setting(
        0.0,
        "Answer 'no landmark' when the top probability is below this (0: never). Stored with the "
        "model by lmrec.train; lmrec.evaluate --reject_threshold overrides it.",
    )
    cam_crop: bool = setting(
        False,
        "For lmrec.evaluate: also crop each photo to its Grad-CAM region, classify the crop and "
        "report accuracy and GAP of the whole photo, the crop and their mean.",
    )
    choose_threshold: bool = setting(
        False,
        "For lmrec.evaluate: choose the 'no landmark' score and threshold of --classifier on "
        "--data (default: the validation split) plus --distractors, and store them in "
        "model_dir/open_set.json, which evaluate, predict and the export then use.",
    )
    max_landmarks_rejected: float = setting(
        knn.DEFAULT_MAX_LANDMARKS_REJECTED,
        "For --choose_threshold: the largest fraction of landmark photos the threshold may "
        "reject (held on unseen photos with 90% confidence).",
    )


@dataclasses.dataclass(frozen=True)
class PredictConfig:
    """How lmrec.predict tags photos."""

    model: str = setting(
        "",
        "An export folder (SavedModel, or its parent of versions) or a training model_dir.",
    )
    output: str = setting(
        "tags.csv",
        "Where predict writes tags: a .csv or .json path. An existing one is resumed: photos "
        "already tagged in it are skipped.",
    )
    top_k: int = TOP_K()
    batch_size: int = BATCH_SIZE()
    min_score: float = setting(
        0.0,
        "Labels scoring below this are left out of the output and the XMP sidecars; a photo whose"
        " best label is below it gets an empty label.",
    )
    xmp: bool = setting(
        False,
        "Write an XMP sidecar beside each tagged photo with the landmark as a keyword (existing "
        "sidecars are kept and extended; photos are never modified).",
    )
    engine: str = setting(
        "auto",
        "On an export: savedmodel (its serving_images signature) | tflite (the float32 file "
        "lmrec.export --tflite=float32 wrote beside it) | tflite-int8 (the int8 file: faster for "
        "big backbones, probabilities slightly off) | auto (tflite when that file exists: as fast"
        " or faster on every measured backbone).",
    )
    max_file_mb: int = setting(
        images.MAX_FILE_MB,
        "A photo file larger than this many MiB fails unread (its size alone decides, so a huge "
        "or sparse file costs nothing).",
    )
    max_megapixels: int = setting(
        images.MAX_MEGAPIXELS,
        "A photo that would decode to more pixels than this (a JPEG counted after DCT scaling) "
        "fails from its header, before any pixel is decoded.",
    )
    decode_memory_mb: int = setting(
        images.DECODE_MEMORY_MB,
        "MiB the photos decoding at once may take together (estimated from each header); a photo "
        "whose estimate alone exceeds it fails, the others wait their turn.",
    )
    sidecar_dir: str = setting(
        "",
        "With --xmp: write the sidecars under this folder, mirroring each input folder's tree "
        "(a subfolder per input), instead of beside the photos.",
    )
    contact_sheet: str = setting(
        "",
        "Also write this HTML page (e.g. tags.html): every photo as a thumbnail, grouped by "
        "landmark, most confident first, with 'no landmark', low-confidence, failed and ignored "
        "sections to review; self-contained, opens from disk.",
    )
    review_below: float = setting(
        0.5,
        "On the contact sheet, tagged photos scoring below this go to the low-confidence section.",
    )


@dataclasses.dataclass(frozen=True)
class GeoConfig:
    """Where photos were taken: their GPS as evidence, and their landmark's location for
    those without GPS (locations in labels.json: lmrec.prepare)."""

    geo_prior: str = setting(
        geo_priors.DEFAULT_MODE,
        "A photo's own GPS (EXIF, or a location in its sidecar that lmrec did not write) "
        "against each landmark's location: off | rule_out (landmarks farther than their "
        "radius are ruled out; a photo far from every known landmark gets 'no landmark') | "
        "soft (their probability falls with the distance past the radius).",
    )
    geo_prior_min_radius_m: float = setting(
        geo_priors.DEFAULT_MIN_RADIUS_M,
        "The least radius of a landmark for --geo_prior, in metres (GPS drift, landmarks "
        "photographed from afar).",
    )
    geo_prior_scale_km: float = setting(
        geo_priors.DEFAULT_SCALE_KM,
        "For --geo_prior=soft: the probability falls by a factor e every this many km past "
        "the radius.",
    )
    locate_min_score: float = setting(
        0.5,
        "A photo without GPS whose landmark has a known location and scores at least this "
        "gets that location: lat/lon in the output (located_from=landmark) and, with --xmp, "
        "GPS in its sidecar. Above 1: no location is written.",
    )


@dataclasses.dataclass(frozen=True)
class GradcamConfig:
    """What lmrec.gradcam explains and where its pictures go."""

    class_name: str = setting(
        "",
        "Explain this class for every photo; default: each photo's predicted class.",
    )
    gradcam_dir: str = setting("", "Where PNGs go; default model_dir/gradcam.")


@dataclasses.dataclass(frozen=True)
class GalleryConfig:
    """What lmrec.gallery adds or removes (its --data, --distractors and --batch_size are
    evaluate's flags)."""

    label: str = setting(
        "",
        "For lmrec.gallery add: the landmark the photos show (a new one, or one the model "
        "knows); for remove: the label to take out.",
    )


@dataclasses.dataclass(frozen=True)
class ClassifierConfig:
    """How evaluate, predict and export decide a photo's class: the trained softmax, the
    votes of the model's gallery (lmrec.gallery), or both."""

    classifier: str = setting(
        "softmax",
        "softmax (the trained head) | knn (similarity-weighted votes of the nearest gallery "
        "photos; needs python -m lmrec.gallery build) | hybrid (both; landmarks added to the "
        "gallery are recognized without retraining).",
    )
    knn_k: int = setting(knn.DEFAULT_K, "For knn and hybrid: how many nearest gallery photos vote.")
    knn_power: float = setting(
        knn.DEFAULT_POWER,
        "For knn and hybrid: each neighbour votes its cosine similarity to this power, so "
        "close matches outweigh loose ones.",
    )
    knn_weight: float = setting(
        knn.DEFAULT_KNN_WEIGHT,
        "For hybrid: the share of the kNN votes; the trained softmax has the rest.",
    )
    open_set_score: str = setting(
        "",
        "What 'no landmark' is decided on: top_probability | top_similarity | margin | "
        "vote_share; '': the score stored with the model by lmrec.evaluate "
        "--choose_threshold (top_probability when none is stored).",
    )


@dataclasses.dataclass(frozen=True)
class CompareConfig:
    """What lmrec.compare trains side by side (each entry is a flagfile plus overrides)."""

    models: str = setting(
        "",
        "Comma-separated entries, each a flagfile optionally followed by space-separated "
        "overrides, e.g. 'configs/recipes/lite0_transfer.cfg --head=gem'.",
    )
    compare_dir: str = setting("runs/compare", "Where its runs and table go.")


@dataclasses.dataclass(frozen=True)
class LrFindConfig:
    """The learning-rate range test of lmrec.lr_find."""

    lr_find_phase: str = setting(
        "finetune",
        "Frozen (suggests --lr_frozen) | finetune (suggests --lr_finetune; phase 1 trains first, "
        "as in lmrec.train).",
    )
    lr_find_min: float = setting(1e-07, "The first learning rate tried.")
    lr_find_max: float = setting(1.0, "The last learning rate tried.")
    lr_find_steps: int = setting(
        100,
        "Training steps, one per rate, spaced geometrically from --lr_find_min to --lr_find_max "
        "(the test stops early once the loss diverges).",
    )
    lr_find_dir: str = setting("", "Where lr_find.png/json go; default: --model_dir.")


@dataclasses.dataclass(frozen=True)
class CopyConfigsConfig:
    """Where lmrec.copy_configs puts the flagfiles lmrec ships."""

    project_dir: str = setting(
        ".",
        "The folder you run lmrec from: the configs go to its configs/ subfolder (they "
        "include each other as configs/...).",
    )
    overwrite: bool = OVERWRITE()


@dataclasses.dataclass(frozen=True)
class CommandConfig:
    """What every `python -m lmrec.<stage>` command accepts."""

    quiet: bool = setting(
        False,
        "Show only warnings, errors and the command's result, no progress messages.",
    )


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
        """Returns a copy with some fields changed, e.g. replace(train={"epochs_frozen": 1}).

        In prepare, a name that is not a PrepareConfig field is an option of the
        source: replace(prepare={"source": "demo", "demo_images_per_class": 5}).
        """
        changed = {}
        for section, values in sections.items():
            current = getattr(self, section)
            if section == "prepare":
                values = _prepare_values(current, values)
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
                SECTIONS[field.name], values.get(field.name, {})
            )
        unknown = set(values) - set(sections)
        if unknown:
            raise ValueError(
                f"Unknown config sections {sorted(unknown)}; known: {sorted(sections)}"
            )
        return cls(**sections)

    def to_flagfile(self) -> str:
        """Renders the config as absl flagfile lines (one --name=value per setting)."""
        seen: dict[str, Any] = {}
        for section in dataclasses.fields(self):
            values = getattr(self, section.name)
            for field in settings.flag_fields(type(values)):
                seen.setdefault(field.name, getattr(values, field.name))
        for name, value in self.prepare.source_options.items():
            seen.setdefault(name, value)
        return "".join(f"--{name}={_flag_value(value)}\n" for name, value in seen.items())


SECTIONS = {
    "prepare": PrepareConfig,
    "data": DataConfig,
    "model": ModelConfig,
    "train": TrainConfig,
    "evaluate": EvaluateConfig,
    "export": ExportConfig,
}

# Each data source's own settings (lmrec.data.sources), part of the prepare section.
SOURCE_OPTION_CLASSES = tuple(spec.options for _, spec in SOURCES.items())

# The settings lmrec.train reads: every section, and every source's options (for
# --prepare_if_missing).
EXPERIMENT_CLASSES = (*SECTIONS.values(), *SOURCE_OPTION_CLASSES)

# Every class whose fields are lmrec flags; a flagfile may hold any of them.
ALL_CONFIG_CLASSES = (
    *EXPERIMENT_CLASSES,
    PredictConfig,
    GeoConfig,
    GradcamConfig,
    GalleryConfig,
    ClassifierConfig,
    CompareConfig,
    LrFindConfig,
    CopyConfigsConfig,
    CommandConfig,
)


def _flag_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _prepare_values(current: PrepareConfig, values: Mapping[str, Any]) -> dict[str, Any]:
    """replace()'s prepare values with source options moved into source_options."""
    own = {field.name for field in dataclasses.fields(PrepareConfig)}
    result = {name: value for name, value in values.items() if name in own}
    options = {name: value for name, value in values.items() if name not in own}
    if options or "source_options" not in result:
        same_source = result.get("source", current.source) == current.source
        kept = dict(current.source_options) if same_source else {}
        result["source_options"] = {**kept, **result.get("source_options", {}), **options}
    return result


def _section_from_mapping(section_cls: type, values: Mapping[str, Any]):
    names = {f.name for f in dataclasses.fields(section_cls)}
    unknown = set(values) - names
    if unknown:
        raise ValueError(
            f"Unknown {section_cls.__name__} fields {sorted(unknown)}; known: {sorted(names)}"
        )
    return section_cls(**values)


def from_flags(section_cls: type, flag_values: absl_flags.FlagValues) -> Any:
    """Builds one config dataclass from parsed absl flag values (same names).

    For PrepareConfig, source_options gets the chosen source's options.
    """
    if section_cls is PrepareConfig:
        return settings.values(
            PrepareConfig, flag_values, source_options=_source_options(flag_values)
        )
    return settings.values(section_cls, flag_values)


def _source_options(flag_values: absl_flags.FlagValues) -> dict[str, Any]:
    """The chosen --source's options from flags; {} for an unknown source, which
    lmrec.data.sources reports when the source is opened."""
    source = flag_values["source"].value
    if source not in SOURCES:
        return {}
    options_class = SOURCES.get(source).options
    return {
        field.name: settings.flag_value(flag_values, field.name)
        for field in dataclasses.fields(options_class)
    }


def experiment_from_flags(flag_values: absl_flags.FlagValues) -> ExperimentConfig:
    """Builds the ExperimentConfig lmrec.train runs from parsed absl flags."""
    return ExperimentConfig(
        **{name: from_flags(cls, flag_values) for name, cls in SECTIONS.items()}
    )


def experiment_from_flagfile(path: str, *overrides: str) -> ExperimentConfig:
    """Reads an absl flagfile (plus "--name=value" overrides) without touching global FLAGS.

    Flags of other commands in the file (e.g. predict's --output) are accepted and
    ignored. For notebooks:
        experiment_from_flagfile("configs/demo.cfg", "--epochs_finetune=2").
    """
    fields = [f for cls in EXPERIMENT_CLASSES for f in settings.flag_fields(cls)]
    others = settings.flag_names(ALL_CONFIG_CLASSES) - settings.flag_names(EXPERIMENT_CLASSES)
    flag_values = settings.parse([f"--flagfile={path}", *overrides], fields, others)
    return experiment_from_flags(flag_values)


def load_experiment(path: str) -> ExperimentConfig:
    """Reads the config.json that lmrec.train wrote into a model_dir."""
    with open(path, encoding="utf-8") as f:
        return ExperimentConfig.from_dict(json.load(f))
