"""Gallery photos read back by id, as small JPEGs for the evaluation report.

A gallery row's photo id is where its photo came from (lmrec.gallery build/add):
the absolute path of a photo added with `gallery add`, and, for a built gallery,
the record id (image/id) in the train shards it was built from, or the path
relative to the folder of class folders it was built from (gallery.json's
"built_from"). A photo that cannot be read (moved, deleted, shards gone) comes
back as None, never as an error: the report shows a placeholder for it.
"""

from __future__ import annotations

import io
import os

import tensorflow as tf
from PIL import Image

from lmrec.data import images, records
from lmrec.errors import UserError
from lmrec.gallery import store

THUMBNAIL_SIDE = 112  # px, the longer side of a report thumbnail
_JPEG_QUALITY = 85


def thumbnail(encoded: bytes, side: int = THUMBNAIL_SIDE) -> bytes | None:
    """An encoded photo as an upright RGB JPEG at most side px long; None if unreadable."""
    try:
        upright, _, _ = images.to_jpeg(encoded)
        with Image.open(io.BytesIO(upright)) as image:
            image = image.convert("RGB")
            image.thumbnail((side, side))
            out = io.BytesIO()
            image.save(out, "JPEG", quality=_JPEG_QUALITY)
            return out.getvalue()
    except (images.BadImage, OSError, ValueError):
        return None


def pixels_thumbnail(pixels, side: int = THUMBNAIL_SIDE) -> bytes:
    """uint8 [H, W, 3] pixels (as the model saw them) as a JPEG at most side px long."""
    image = Image.fromarray(pixels)
    image.thumbnail((side, side))
    out = io.BytesIO()
    image.save(out, "JPEG", quality=_JPEG_QUALITY)
    return out.getvalue()


def _read(path: str) -> bytes | None:
    try:
        return images.read_file(path)
    except (images.BadImage, OSError, UserError, tf.errors.OpError):
        return None


def _from_shards(pattern: str, wanted: set[str]) -> dict[str, bytes]:
    """The encoded photos of the wanted record ids in the shards matching pattern.

    Reads the shards once, parsing only the id of each record and the photo of the
    wanted ones; stops as soon as every wanted id is found.
    """
    files = sorted(tf.io.gfile.glob(pattern))
    if not files or not wanted:
        return {}
    wanted_ids = tf.constant(sorted(wanted))
    id_only = {records.IMAGE_ID: tf.io.FixedLenFeature([], tf.string, default_value="")}
    photo = {records.ENCODED: tf.io.FixedLenFeature([], tf.string)}

    def with_id(serialized):
        return serialized, tf.io.parse_single_example(serialized, id_only)[records.IMAGE_ID]

    dataset = (
        tf.data.TFRecordDataset(files, num_parallel_reads=tf.data.AUTOTUNE)
        .map(with_id, num_parallel_calls=tf.data.AUTOTUNE)
        .filter(lambda serialized, photo_id: tf.reduce_any(tf.equal(photo_id, wanted_ids)))
        .map(
            lambda serialized, photo_id: (
                photo_id,
                tf.io.parse_single_example(serialized, photo)[records.ENCODED],
            )
        )
    )
    found: dict[str, bytes] = {}
    try:
        for photo_id, encoded in dataset:
            found[photo_id.numpy().decode("utf-8")] = encoded.numpy()
            if len(found) == len(wanted):
                break
    except tf.errors.OpError:
        pass  # a damaged shard: what was found before it is kept
    return found


def photo_thumbnails(model_dir: str, photo_ids, side: int = THUMBNAIL_SIDE) -> dict:
    """{photo id: JPEG thumbnail bytes, or None when the photo cannot be read}.

    Args:
      model_dir: the model whose gallery holds the photos.
      photo_ids: gallery photo ids (Gallery.photo_ids entries).
      side: the longest side of a thumbnail in px.
    """
    wanted = list(dict.fromkeys(photo_ids))
    try:
        built_from = store.read_index(store.gallery_dir(model_dir)).get("built_from", "")
    except (FileNotFoundError, UserError):
        built_from = ""
    encoded: dict[str, bytes | None] = {}
    in_shards = set()
    for photo_id in wanted:
        if os.path.isabs(photo_id):
            encoded[photo_id] = _read(photo_id)
        elif built_from and os.path.isdir(built_from):
            encoded[photo_id] = _read(os.path.join(built_from, photo_id))
        else:
            in_shards.add(photo_id)
    if built_from and in_shards:
        encoded.update(_from_shards(built_from, in_shards))
    return {
        photo_id: thumbnail(encoded[photo_id], side) if encoded.get(photo_id) else None
        for photo_id in wanted
    }
