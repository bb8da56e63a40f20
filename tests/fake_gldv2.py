"""A fake GLDv2 mirror in the official layout, for the downloader's and the notebook's tests.

<root>/metadata/train.csv                    id,url,landmark_id
<root>/metadata/train_clean.csv              landmark_id,images (space-separated ids)
<root>/metadata/train_label_to_category.csv  landmark_id,category
<root>/train/images_NNN.tar                  a/b/c/<id>.jpg
<root>/md5sum/train/md5.images_NNN.txt       "<md5>  images_NNN.tar"
"""

from __future__ import annotations

import collections
import hashlib
import io
import pathlib
import tarfile

from PIL import Image


def jpeg(color: tuple[int, int, int], size: tuple[int, int] = (8, 6)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, color).save(out, "JPEG")
    return out.getvalue()


def add_member(archive: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    archive.addfile(info, io.BytesIO(data))


def write_tar(path: pathlib.Path, members: dict[str, bytes]) -> bytes:
    with tarfile.open(path, "w") as archive:
        for name, data in members.items():
            add_member(archive, name, data)
    return path.read_bytes()


def write_mirror(
    root: pathlib.Path,
    tars: dict[int, dict[str, tuple[bytes, int]]],
    categories: dict[int, str],
    prefixed: frozenset[int] = frozenset(),
) -> dict[int, bytes]:
    """Writes the mirror; returns each tar's bytes.

    Args:
      tars: tar number -> {image id: (JPEG bytes, landmark id)}.
      categories: landmark id -> its Wikimedia category name (the class name).
      prefixed: tars that store train/a/b/c/<id>.jpg, as some official tars do.
    """
    (root / "metadata").mkdir(parents=True)
    (root / "train").mkdir()
    (root / "md5sum" / "train").mkdir(parents=True)
    written = {}
    rows = ["id,url,landmark_id"]
    per_landmark: dict[int, list[str]] = collections.defaultdict(list)
    for number, images in tars.items():
        prefix = "train/" if number in prefixed else ""
        members = {}
        for image_id, (data, landmark) in images.items():
            members[f"{prefix}{'/'.join(image_id[:3])}/{image_id}.jpg"] = data
            rows.append(f"{image_id},http://example.com/{image_id}.jpg,{landmark}")
            per_landmark[landmark].append(image_id)
        name = f"images_{number:03d}"
        written[number] = write_tar(root / "train" / f"{name}.tar", members)
        md5 = hashlib.md5(written[number]).hexdigest()
        (root / "md5sum" / "train" / f"md5.{name}.txt").write_text(f"{md5}  {name}.tar\n")
    (root / "metadata" / "train.csv").write_text("\n".join(rows) + "\n")
    clean = [f"{landmark},{' '.join(ids)}" for landmark, ids in sorted(per_landmark.items())]
    (root / "metadata" / "train_clean.csv").write_text(
        "\n".join(["landmark_id,images", *clean]) + "\n"
    )
    (root / "metadata" / "train_label_to_category.csv").write_text(
        "landmark_id,category\n"
        + "".join(
            f"{landmark},http://commons.wikimedia.org/wiki/Category:{name}\n"
            for landmark, name in categories.items()
        )
    )
    return written
