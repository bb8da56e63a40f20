"""Every absl flag of lmrec, defined once.

Each flag name equals a field name of a dataclass in lmrec.config, and its
default is read from that field, so defaults live in one place. All stages
share this one set, so any stage accepts any flagfile (configs/common.cfg, or
the flags.cfg a training run wrote into its model_dir). Only lmrec.config
turns parsed values into dataclasses; no other module reads FLAGS.

Notebooks and tests parse a flagfile without touching the global FLAGS:
    values = lmrec.flags.parse(["--flagfile=configs/demo.cfg", "--epochs_frozen=1"])
"""

from __future__ import annotations

from absl import flags

from lmrec.config import (
    CompareConfig,
    DataConfig,
    EvaluateConfig,
    ExportConfig,
    GradcamConfig,
    LrFindConfig,
    ModelConfig,
    PredictConfig,
    PrepareConfig,
    TrainConfig,
    field_default,
)

_DEFINE = {
    str: flags.DEFINE_string,
    int: flags.DEFINE_integer,
    float: flags.DEFINE_float,
    bool: flags.DEFINE_boolean,
}

# (config class, flag name, help). Grouped by stage; the order is the order of --help.
FLAG_TABLE: tuple[tuple[type, str, str], ...] = (
    # prepare: photos -> TFRecords
    (PrepareConfig, "source", "Where photos come from: demo | folder | gldv2 | tfds | tfrecords."),
    (
        PrepareConfig,
        "input_dir",
        "For --source=folder: a folder with one subfolder per class (any nesting below it).",
    ),
    (
        PrepareConfig,
        "name",
        "Dataset name; shards go to <output_dir>/<name>/. Default: the source.",
    ),
    (PrepareConfig, "output_dir", "Parent folder of prepared datasets."),
    (
        PrepareConfig,
        "val_fraction",
        "Fraction of each class held out for validation (every class keeps >= 1 training image).",
    ),
    (PrepareConfig, "seed", "Seed of the train/val split and of training shuffles."),
    (
        PrepareConfig,
        "max_image_side",
        "Photos whose longer side exceeds this are downscaled before storing (0: keep size).",
    ),
    (PrepareConfig, "images_per_shard", "Images per TFRecord shard."),
    (PrepareConfig, "overwrite", "Replace an existing prepared dataset."),
    (PrepareConfig, "demo_images_per_class", "For --source=demo: images drawn per class."),
    (PrepareConfig, "demo_image_size", "For --source=demo: side of the drawn images in pixels."),
    (PrepareConfig, "num_workers", "Processes writing shards in parallel; 0: one per CPU core."),
    (
        PrepareConfig,
        "runner",
        "local (worker processes on this machine) | beam (the same shard writer as an Apache "
        "Beam pipeline; DirectRunner unless --beam_options name another runner).",
    ),
    (
        PrepareConfig,
        "beam_options",
        "Apache Beam pipeline options for --runner=beam, e.g. '--runner=DataflowRunner "
        "--project=P --region=R --temp_location=gs://B/tmp'.",
    ),
    (
        PrepareConfig,
        "gldv2_dir",
        "For --source=gldv2: folder with train.csv or train_clean.csv, "
        "train_label_to_category.csv and the images as train/a/b/c/abc....jpg.",
    ),
    (PrepareConfig, "gldv2_csv", "Which GLDv2 list to read: train | train_clean."),
    (PrepareConfig, "min_images_per_class", "Keep classes with at least this many images."),
    (
        PrepareConfig,
        "max_images_per_class",
        "Cap per class (a seeded random sample); 0: no cap.",
    ),
    (
        PrepareConfig,
        "num_classes",
        "Keep this many of the classes that pass the other filters; 0: all.",
    ),
    (
        PrepareConfig,
        "class_selection",
        "With --num_classes: most (the most populous) | random (seeded sample).",
    ),
    (
        PrepareConfig,
        "classes",
        "Comma-separated landmark ids to keep; overrides --num_classes (the image-count "
        "filters still apply).",
    ),
    (PrepareConfig, "gldv2_url", "Base URL of the GLDv2 files (official mirror or your own)."),
    (PrepareConfig, "gldv2_tars", "Image tar shards to download: all | a list like 0-9,17."),
    (PrepareConfig, "download_jobs", "Parallel downloads."),
    (PrepareConfig, "tfds_name", "For --source=tfds: a TFDS image classification dataset."),
    (PrepareConfig, "tfds_split", "For --source=tfds: the split to read, e.g. train."),
    (PrepareConfig, "tfds_data_dir", "For --source=tfds: TFDS data_dir; empty: TFDS default."),
    (
        PrepareConfig,
        "tfrecords_label_offset",
        "For --source=tfrecords: subtracted from stored labels (1 for 1-based label sets).",
    ),
    # data pipeline
    (DataConfig, "data_dir", "Prepared dataset folder (train-*/val-* shards)."),
    (DataConfig, "image_size", "Model input side in pixels; 0: backbone default."),
    (
        DataConfig,
        "batch_size",
        "Photos per batch on each replica; training's global batch is this x replicas.",
    ),
    (
        DataConfig,
        "augment",
        "Training augmentation policy: none | light | seeds | randaugment.",
    ),
    (DataConfig, "mixing", "Mix training batches and their labels: none | mixup | cutmix."),
    (
        DataConfig,
        "balance",
        "Long-tailed classes: none | class_weights (loss weights) | resample (balanced sampling).",
    ),
    (DataConfig, "shuffle_buffer", "Examples in the shuffle buffer."),
    # model
    (
        ModelConfig,
        "backbone",
        "xception | inceptionv3 | resnet50 | efficientnetb7 | efficientnet_lite0|1|2 | "
        "squeezenet | resnet18 | resnet34 | baseline, or any keras.applications model by its "
        "lower-case class name (densenet201, mobilenetv2, efficientnetv2s, convnexttiny, ...).",
    ),
    (
        ModelConfig,
        "weights",
        "imagenet (Keras download) | none (random init) | path to a Keras weights file.",
    ),
    (
        ModelConfig,
        "head",
        "Classification head: gap_dense512 | bilinear | gem | spatial_attention | "
        "self_attention | bilinear_self_attention.",
    ),
    (ModelConfig, "dense_units", "Width of the head's hidden Dense layer."),
    (ModelConfig, "dropout", "Dropout rate before the softmax layer."),
    (
        ModelConfig,
        "bilinear_dim",
        "Output dimension of compact bilinear pooling (Tensor Sketch) in the bilinear heads.",
    ),
    (
        ModelConfig,
        "loss",
        "Training loss: softmax (cross-entropy) | focal (down-weights easy examples, for long "
        "tails) | arcface | subcenter_arcface (additive angular margin on a cosine classifier). "
        "The model outputs softmax probabilities with every loss.",
    ),
    (
        ModelConfig,
        "arcface_scale",
        "ArcFace scale s: the cosine classifier's logits are s*cos(angle), so s bounds them; "
        "about 30 for tens to thousands of classes.",
    ),
    (
        ModelConfig,
        "subcenters",
        "Weights per class for --loss=subcenter_arcface (each class scores its closest one); "
        "--loss=arcface always has 1.",
    ),
    # training
    (TrainConfig, "model_dir", "Run folder: flags, labels, checkpoints, history, logs, report."),
    (TrainConfig, "epochs_frozen", "Phase 1 epochs: head only, backbone frozen."),
    (TrainConfig, "epochs_finetune", "Phase 2 epochs: backbone unfrozen."),
    (TrainConfig, "lr_frozen", "Phase 1 learning rate."),
    (TrainConfig, "lr_finetune", "Phase 2 learning rate (lower, to keep features)."),
    (
        TrainConfig,
        "lr_schedule",
        "Learning-rate schedule within each phase, from the phase's rate: constant | step "
        "(x --lr_decay_factor every --lr_step_epochs) | cosine (decays to 0 by the phase's last "
        "step) | cosine_restarts (SGDR: cosine cycles back to the peak, the first "
        "--restart_epochs long, each next --restart_multiplier times longer).",
    ),
    (
        TrainConfig,
        "lr_step_epochs",
        "For --lr_schedule=step: epochs between drops (fractions allowed); 0: drops at 1/3 and "
        "2/3 of each phase.",
    ),
    (TrainConfig, "lr_decay_factor", "For --lr_schedule=step: factor of each drop, in (0, 1]."),
    (
        TrainConfig,
        "restart_epochs",
        "For --lr_schedule=cosine_restarts: epochs of the first cycle (fractions allowed).",
    ),
    (
        TrainConfig,
        "restart_multiplier",
        "For --lr_schedule=cosine_restarts: each cycle is this many times longer than the "
        "last (>= 1).",
    ),
    (
        TrainConfig,
        "warmup_epochs",
        "Phase 2 (fine-tuning, or all of a from-scratch run) first raises its rate linearly "
        "from 0 over this many epochs, then runs --lr_schedule over the rest; 0: no warm-up. "
        "Phase 1 (a new head on a frozen backbone) needs none.",
    ),
    (
        TrainConfig,
        "layer_lr_ratio",
        "Phase 2 discriminative learning rates (fastai's slice(lo, hi), layer-wise decay): the "
        "backbone's first layer trains at this fraction of --lr_finetune, rising geometrically "
        "with depth to the full rate at its top and in the head; in (0, 1], 1: one rate for "
        "all. E.g. 0.03 with a 3x higher --lr_finetune.",
    ),
    (
        TrainConfig,
        "unfreeze_from",
        "Phase 2 unfreezes the backbone from this layer name (or name prefix, e.g. block13) to "
        "the top; empty: the whole backbone. BatchNorm of pretrained backbones stays frozen.",
    ),
    (
        TrainConfig,
        "freeze_layers",
        "Phase 2 keeps the backbone's first N layers (backbone.layers[:N], as in Keras' "
        "fine-tuning guide; the seed froze Xception's first 85) frozen; 0: none. With "
        "--unfreeze_from, the later of the two starting points wins.",
    ),
    (
        TrainConfig,
        "strategy",
        "tf.distribute strategy: auto (mirrored over GPUs if any, else default) | default | "
        "mirrored (all local GPUs) | multi_worker (MultiWorkerMirroredStrategy over the "
        "machines in the TF_CONFIG environment variable; start the same command on each) | "
        "tpu (Colab/Cloud TPU; data on gs://). --batch_size is per replica.",
    ),
    (
        TrainConfig,
        "lr_scaling",
        "How the learning rates follow the global batch (--batch_size x replicas): none | "
        "linear (x replicas, Goyal et al.; for SGD) | sqrt (x sqrt(replicas); for Adam-type).",
    ),
    (
        TrainConfig,
        "sync_batchnorm",
        "With more than one replica, BatchNorm layers that train compute their batch "
        "statistics over the global batch (all replicas and workers), so every worker "
        "ends with the same moving statistics; false: each replica uses its own slice.",
    ),
    (
        TrainConfig,
        "mixed_precision",
        "Training precision: none (float32) | auto (float16 on a GPU, else float32) | float16 "
        "(mixed_float16, loss scaling included) | bfloat16 (mixed_bfloat16: TPUs, recent GPUs "
        "and CPUs with bfloat16 units; slow on most CPUs). Variables, softmax and loss stay "
        "float32; evaluation and export run in float32.",
    ),
    (
        TrainConfig,
        "jit_compile",
        "XLA compilation of the training step: auto (Keras decides; off on CPU-only machines) "
        "| true | false. On CPU, XLA slows the EfficientNets several-fold (a warning says so).",
    ),
    (
        TrainConfig,
        "optimizer",
        "adam | adamw | rmsprop (the seeds' Keras-tutorial optimizer) | sgd (Nesterov, "
        "--momentum); a fresh one per phase.",
    ),
    (TrainConfig, "momentum", "Momentum of --optimizer=sgd, in [0, 1)."),
    (TrainConfig, "weight_decay", "Decoupled weight decay for adamw, rmsprop and sgd (0: none)."),
    (
        TrainConfig,
        "ema_momentum",
        "If > 0 (e.g. 0.98), keep an exponential moving average of the weights and use it for "
        "validation, checkpoints and export: steadier than the last step's weights.",
    ),
    (
        TrainConfig,
        "select_epoch",
        "Which epoch's weights are evaluated and exported: best (highest validation accuracy) "
        "or last. With a small validation split, picking by it is noisy, and the last epoch of "
        "a decayed schedule is often the better model.",
    ),
    (TrainConfig, "steps_per_epoch", "Training steps per epoch; 0: one pass over the data."),
    (
        TrainConfig,
        "checkpoint_every_steps",
        "Besides every epoch end, save the resume checkpoint (model_dir/resume: weights, "
        "optimizer state, position) every N training steps; 0: off. A killed run started "
        "again with the same command continues from the last one.",
    ),
    (
        TrainConfig,
        "checkpoint_every_seconds",
        "Save the resume checkpoint within an epoch at least this often (seconds); 0: only "
        "at epoch ends and per --checkpoint_every_steps.",
    ),
    (
        TrainConfig,
        "checkpoint_min_seconds",
        "An epoch end saves the resume checkpoint (and best/last.weights.h5) only when the "
        "last save is at least this old (seconds); a phase's last epoch always saves. Short "
        "epochs then do not spend more time saving than training; a kill loses at most this "
        "much. 0: every epoch end.",
    ),
    (
        TrainConfig,
        "early_stopping_patience",
        "End a phase after this many epochs without improvement of --early_stopping_metric "
        "(phase 1 then moves on to phase 2); 0: off. --select_epoch still picks the weights.",
    ),
    (
        TrainConfig,
        "early_stopping_metric",
        "What --early_stopping_patience watches: val_accuracy | val_loss | val_top5, or the "
        "training loss | accuracy | top5 (the val_ ones fall back to these without a val split).",
    ),
    (
        TrainConfig,
        "tensorboard_images",
        "Validation photos drawn in TensorBoard (Images tab), titled with the true and "
        "predicted class and its probability; 0: none.",
    ),
    (
        TrainConfig,
        "tensorboard_images_every",
        "Draw the --tensorboard_images every N epochs and after each phase's last epoch "
        "(drawing takes about half a second).",
    ),
    (
        TrainConfig,
        "cache_frozen_features",
        "Phase 1 on cached features: the frozen backbone runs once over the images (or "
        "--feature_cache_passes augmented passes) and the head trains on its stored outputs: "
        "auto (when that is exact and saves time; the run says why not otherwise) | on (an "
        "error if it cannot be exact, e.g. with --mixing) | off. Phase 2 always reads images.",
    ),
    (
        TrainConfig,
        "feature_cache_passes",
        "With --augment other than none: augmented passes over the training images that phase "
        "1's cache holds (at most --epochs_frozen); epoch e trains on pass e mod this. More "
        "passes keep more of the augmentation and cost one backbone pass each.",
    ),
    (
        TrainConfig,
        "feature_cache_dir",
        "Where phase 1's cached features go: empty keeps them in memory if they fit in half "
        "the free memory, else in a folder in --model_dir; a folder puts them on disk there. "
        "Files are deleted when phase 1 ends.",
    ),
    (
        TrainConfig,
        "label_smoothing",
        "Label smoothing of the cross-entropy (of every --loss), in [0, 1).",
    ),
    (
        TrainConfig,
        "arcface_margin",
        "ArcFace additive angular margin m in radians, in [0, pi/2): training makes the true "
        "class win by m in angle. 0 is softmax cross-entropy on the cosine logits.",
    ),
    (
        TrainConfig,
        "focal_gamma",
        "Focal loss exponent: each example's loss is scaled by (1 - p_true)^gamma; 0 is the "
        "cross-entropy.",
    ),
    (
        TrainConfig,
        "prepare_if_missing",
        "If data_dir holds no shards, run lmrec.prepare with this config's prepare flags first.",
    ),
    (
        TrainConfig,
        "evaluate_after",
        "Evaluate the best model after training (on --data if given, else the val split).",
    ),
    (TrainConfig, "export_after", "Export a SavedModel after training."),
    # export
    (ExportConfig, "export_dir", "Parent of <model_name>/<version>/ SavedModels."),
    (ExportConfig, "model_name", "TF Serving model name; default: the model_dir's folder name."),
    (ExportConfig, "version", "Export version; 0: next free number. Never overwrites."),
    (ExportConfig, "top_k", "Labels returned per image."),
    (
        ExportConfig,
        "tflite",
        "For lmrec.export: also write TFLite files, comma-separated: float32,float16,int8 "
        "(dynamic-range), to <export_dir>/<model_name>_tflite/<version>/; each is checked "
        "against the SavedModel on held-out images (--data, default: the validation shards). "
        "Empty: none.",
    ),
    (
        ExportConfig,
        "tflite_check_images",
        "For --tflite: how many held-out images each TFLite file is compared on.",
    ),
    # evaluate / predict
    (
        EvaluateConfig,
        "data",
        "What to evaluate on: a prepared dataset folder (its val shards), a glob of shards, or "
        "an image folder with one subfolder per class. Default: the validation shards used in "
        "training.",
    ),
    (
        EvaluateConfig,
        "distractors",
        "For lmrec.evaluate: a folder of photos without landmarks (people, gear, indoor shots), "
        "evaluated as non-landmark queries: GAP is reported with and without them.",
    ),
    (
        EvaluateConfig,
        "reject_threshold",
        "Answer 'no landmark' when the top probability is below this (0: never). Stored with "
        "the model by lmrec.train; lmrec.evaluate --reject_threshold overrides it.",
    ),
    (
        EvaluateConfig,
        "cam_crop",
        "For lmrec.evaluate: also crop each photo to its Grad-CAM region, classify the crop "
        "and report accuracy and GAP of the whole photo, the crop and their mean.",
    ),
    (
        PredictConfig,
        "model",
        "An export folder (SavedModel, or its parent of versions) or a training model_dir.",
    ),
    (
        PredictConfig,
        "output",
        "Where predict writes tags: a .csv or .json path. An existing one is resumed: photos "
        "already tagged in it are skipped.",
    ),
    (
        PredictConfig,
        "min_score",
        "For lmrec.predict: labels scoring below this are left out of the output and the XMP "
        "sidecars; a photo whose best label is below it gets an empty label.",
    ),
    (
        PredictConfig,
        "engine",
        "For lmrec.predict on an export: savedmodel (its serving_images signature) | tflite "
        "(the float32 file lmrec.export --tflite=float32 wrote beside it) | tflite-int8 (the "
        "int8 file: faster for big backbones, probabilities slightly off) | auto (tflite when "
        "that file exists: as fast or faster on every measured backbone).",
    ),
    (
        PredictConfig,
        "xmp",
        "For lmrec.predict: write an XMP sidecar beside each tagged photo with the landmark as "
        "a keyword (existing sidecars are kept and extended; photos are never modified).",
    ),
    (
        PredictConfig,
        "max_file_mb",
        "For lmrec.predict: a photo file larger than this many MiB fails unread (its size "
        "alone decides, so a huge or sparse file costs nothing).",
    ),
    (
        PredictConfig,
        "max_megapixels",
        "For lmrec.predict: a photo that would decode to more pixels than this (a JPEG counted "
        "after DCT scaling) fails from its header, before any pixel is decoded.",
    ),
    (
        PredictConfig,
        "decode_memory_mb",
        "For lmrec.predict: MiB the photos decoding at once may take together (estimated from "
        "each header); a photo whose estimate alone exceeds it fails, the others wait their turn.",
    ),
    # gradcam: what the model looked at
    (
        GradcamConfig,
        "class_name",
        "For lmrec.gradcam: explain this class for every photo; default: each photo's "
        "predicted class.",
    ),
    (GradcamConfig, "gradcam_dir", "For lmrec.gradcam: where PNGs go; default model_dir/gradcam."),
    # compare: several models on the same data, one table
    (
        CompareConfig,
        "models",
        "For lmrec.compare: comma-separated entries, each a flagfile optionally followed by "
        "space-separated overrides, e.g. 'configs/recipes/lite0_transfer.cfg --head=gem'.",
    ),
    (CompareConfig, "compare_dir", "For lmrec.compare: where its runs and table go."),
    # lr_find: the learning-rate range test
    (
        LrFindConfig,
        "lr_find_phase",
        "For lmrec.lr_find: frozen (suggests --lr_frozen) | finetune (suggests --lr_finetune; "
        "phase 1 trains first, as in lmrec.train).",
    ),
    (LrFindConfig, "lr_find_min", "For lmrec.lr_find: the first learning rate tried."),
    (LrFindConfig, "lr_find_max", "For lmrec.lr_find: the last learning rate tried."),
    (
        LrFindConfig,
        "lr_find_steps",
        "For lmrec.lr_find: training steps, one per rate, spaced geometrically from "
        "--lr_find_min to --lr_find_max (the test stops early once the loss diverges).",
    ),
    (
        LrFindConfig,
        "lr_find_dir",
        "For lmrec.lr_find: where lr_find.png/json go; default: --model_dir.",
    ),
)


def define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> dict[str, flags.FlagHolder]:
    """Defines every lmrec flag on flag_values; returns the holders by name."""
    holders = {}
    for config_class, name, help_text in FLAG_TABLE:
        default = field_default(config_class, name)
        holders[name] = _DEFINE[type(default)](name, default, help_text, flag_values=flag_values)
    return holders


def parse(args: list[str]) -> flags.FlagValues:
    """Parses flag arguments (e.g. ["--flagfile=configs/demo.cfg"]) into a new FlagValues.

    Raises:
      absl.flags.Error: an unknown or malformed flag (the message names it).
    """
    flag_values = flags.FlagValues()
    define_flags(flag_values)
    flag_values(["lmrec", *args])
    return flag_values


HOLDERS = define_flags()
