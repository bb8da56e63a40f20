"""The contact sheet of a tagging run: sections, order, escaping, no network, size at scale."""

from __future__ import annotations

import base64
import html.parser
import io
import time

import numpy as np
import pytest
from PIL import Image

from lmrec import contact_sheet
from lmrec.contact_sheet import SheetEntry
from lmrec.errors import UserError
from lmrec.metrics import NO_LANDMARK_NAME
from lmrec.tag_store import Row

NASTY_NAME = "we\"ird 'q' <b>&amp; café 東京.jpg"


def photo(seed: int, size=(640, 480), orientation: int = 0) -> bytes:
    """A JPEG that compresses like a photo: smooth gradients, a few shapes and sensor noise."""
    rng = np.random.default_rng(seed)
    width, height = size
    x = np.arange(width, dtype=np.float32)[None, :]
    y = np.arange(height, dtype=np.float32)[:, None]
    pixels = np.empty((height, width, 3), np.float32)
    for channel in range(3):
        a, b, c = rng.uniform(-0.3, 0.3, 3)
        pixels[..., channel] = 128 + a * x + b * y + 60 * np.sin(x / (30 + 40 * abs(c)))
    for _ in range(6):
        cx, cy, r = rng.uniform(0, width), rng.uniform(0, height), rng.uniform(20, 120)
        pixels[(x - cx) ** 2 + (y - cy) ** 2 < r * r] = rng.uniform(0, 255, 3)
    pixels += rng.standard_normal(pixels.shape, dtype=np.float32) * 10
    image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
    out = io.BytesIO()
    exif = Image.Exif()
    if orientation:
        exif[0x0112] = orientation
    image.save(out, "JPEG", quality=88, exif=exif.tobytes())
    return out.getvalue()


class _Node:
    def __init__(self, tag: str, attrs: dict, parent: _Node | None):
        self.tag, self.attrs, self.parent = tag, attrs, parent
        self.children: list[_Node] = []
        self.text: list[str] = []

    def all(self, tag: str) -> list[_Node]:
        found = []
        for child in self.children:
            if child.tag == tag:
                found.append(child)
            found += child.all(tag)
        return found

    def ancestors(self) -> list[str]:
        node, tags = self.parent, []
        while node is not None:
            tags.append(node.tag)
            node = node.parent
        return tags

    def full_text(self) -> str:
        return "".join(self.text) + "".join(child.full_text() for child in self.children)


class _TreeBuilder(html.parser.HTMLParser):
    """The page as a tree of _Node (html.parser unescapes text and attribute values)."""

    VOID = {"img", "meta", "br", "hr", "input", "link"}

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.root = _Node("root", {}, None)
        self.current = self.root

    def handle_starttag(self, tag, attrs):
        node = _Node(tag, dict(attrs), self.current)
        self.current.children.append(node)
        if tag not in self.VOID:
            self.current = node

    def handle_endtag(self, tag):
        node = self.current
        while node is not self.root and node.tag != tag:
            node = node.parent
        assert node is not self.root, f"</{tag}> closes nothing"
        self.current = node.parent

    def handle_data(self, data):
        self.current.text.append(data)


def parse(path) -> _Node:
    builder = _TreeBuilder()
    builder.feed(path.read_text(encoding="utf-8"))
    builder.close()
    assert builder.current is builder.root, "unclosed elements"
    return builder.root


def cards_of(node: _Node) -> list[_Node]:
    return [figure for figure in node.all("figure") if "card" in figure.attrs.get("class", "")]


def card_name(card: _Node) -> str:
    spans = [s for s in card.all("span") if s.attrs.get("class") == "name"]
    return spans[0].full_text()


def card_score(card: _Node) -> float:
    return float(next(s for s in card.all("span") if s.attrs.get("class") == "score").full_text())


def data_uri_image(img: _Node) -> Image.Image:
    prefix = "data:image/jpeg;base64,"
    assert img.attrs["src"].startswith(prefix)
    return Image.open(io.BytesIO(base64.b64decode(img.attrs["src"][len(prefix) :])))


@pytest.fixture
def tagged_run(tmp_path):
    """Photos of a small tagging run: two landmarks, low scores, rejections, a broken file."""
    folder = tmp_path / "photos"
    folder.mkdir()

    def put(name: str, data: bytes) -> str:
        (folder / name).write_bytes(data)
        return str(folder / name)

    entries = [
        SheetEntry(put("tower 1.jpg", photo(1)), "Eiffel Tower", 0.71),
        SheetEntry(
            put("tower 2.jpg", photo(2)),
            "Eiffel Tower",
            0.98,
            latitude=48.85837,
            longitude=2.294481,
            located_from="landmark",
        ),  # fmt: skip
        SheetEntry(
            put("tower 3.jpg", photo(3)), "Eiffel Tower", 0.85, gps_note="GPS: was Louvre (0.52)"
        ),  # fmt: skip
        SheetEntry(put("portrait.jpg", photo(4, (400, 200), orientation=6)), "Louvre", 0.9),
        SheetEntry(put(NASTY_NAME, photo(5)), "Louvre", 0.8),
        SheetEntry(put("broken.jpg", b"\xff\xd8\xff\xe0 not really a jpeg"), "Louvre", 0.95),
        SheetEntry(put("blurry.jpg", photo(6)), "Louvre", 0.41),
        SheetEntry(put("unsure.jpg", photo(7)), "", 0.2),
        SheetEntry(put("cat.jpg", photo(8)), "Louvre", 0.3, rejected=True),
        SheetEntry(put("dog.jpg", photo(9)), "Eiffel Tower", 0.35, rejected=True),
    ]
    failed = [{"file": str(folder / "empty <1>.jpg"), "reason": "empty file (0 bytes)"}]
    ignored = [{"file": str(folder / "notes.txt"), "reason": "not an image"}]
    return entries, failed, ignored


def write(tmp_path, entries, failed=(), ignored=(), **options):
    path = tmp_path / "tags.html"
    summary = contact_sheet.write_contact_sheet(
        str(path), entries, failed, ignored, verbose=False, **options
    )
    return path, summary


def test_thumbnail_is_small_upright_and_none_for_a_bad_file(tmp_path):
    rotated = tmp_path / "rotated.jpg"
    rotated.write_bytes(photo(1, (400, 200), orientation=6))  # stored landscape, shown portrait
    big = tmp_path / "big.jpg"
    big.write_bytes(photo(2, (1600, 1200)))
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff not a jpeg")

    jpeg = contact_sheet.thumbnail(str(rotated), side=112)
    assert Image.open(io.BytesIO(jpeg)).size == (56, 112)
    jpeg = contact_sheet.thumbnail(str(big), side=112)
    with Image.open(io.BytesIO(jpeg)) as image:
        assert image.format == "JPEG" and image.size == (112, 84)
    assert len(jpeg) < 8_000
    assert contact_sheet.thumbnail(str(broken)) is None
    assert contact_sheet.thumbnail(str(tmp_path / "missing.jpg")) is None
    assert contact_sheet.thumbnail(str(tmp_path)) is None  # a folder


def test_sections_in_order_most_confident_first(tmp_path, tagged_run):
    entries, failed, ignored = tagged_run
    path, summary = write(tmp_path, entries, failed, ignored, low_confidence_below=0.5)
    root = parse(path)

    sections = [s.attrs["id"] for s in root.all("section")]
    assert sections == list(contact_sheet.SECTIONS)
    by_id = {s.attrs["id"]: s for s in root.all("section")}
    # Every section starts collapsed.
    assert all("open" not in d.attrs for d in root.all("details"))

    groups = by_id["landmarks"].all("details")[1:]
    # Largest group first, then by name.
    assert ["".join(g.children[0].text).strip() for g in groups] == ["Eiffel Tower", "Louvre"]
    towers = cards_of(groups[0])
    assert [card_name(c) for c in towers] == ["tower 2.jpg", "tower 3.jpg", "tower 1.jpg"]
    assert [card_score(c) for c in towers] == [0.98, 0.85, 0.71]
    assert "48.85837, 2.29448 (from landmark)" in towers[0].full_text()
    assert "GPS: was Louvre (0.52)" in towers[1].full_text()
    louvre = cards_of(groups[1])
    assert [card_name(c) for c in louvre] == ["broken.jpg", "portrait.jpg", NASTY_NAME]

    low = cards_of(by_id["low-confidence"])
    assert [card_name(c) for c in low] == ["blurry.jpg", "unsure.jpg"]
    rejected = cards_of(by_id["no-landmark"])
    assert [card_name(c) for c in rejected] == ["dog.jpg", "cat.jpg"]
    assert "closest: Eiffel Tower" in rejected[0].full_text()

    failed_rows = by_id["failed"].all("tr")[1:]
    assert [td.full_text() for td in failed_rows[0].all("td")] == [
        failed[0]["file"],
        "empty file (0 bytes)",
    ]
    assert "not an image" in by_id["ignored"].full_text()
    assert by_id["failed"].all("img") == [] and by_id["ignored"].all("img") == []

    assert summary.counts == {
        "landmarks": 6,
        "low-confidence": 2,
        "no-landmark": 2,
        "failed": 1,
        "ignored": 1,
    }
    assert summary.landmarks == 2 and summary.thumbnails_missing == 1
    assert summary.bytes == path.stat().st_size
    summary_text = by_id["summary"].full_text()
    assert "10 photos classified" in summary_text and "tagged below 0.5" in summary_text


def test_thumbnails_are_data_uris_upright_with_a_placeholder_for_a_bad_file(tmp_path, tagged_run):
    entries, failed, ignored = tagged_run
    path, _ = write(tmp_path, entries, failed, ignored)
    root = parse(path)
    cards = {card_name(card): card for card in cards_of(root)}
    assert len(cards) == len(entries)
    assert cards["broken.jpg"].all("img") == []
    assert "no preview" in cards["broken.jpg"].full_text()
    (portrait,) = cards["portrait.jpg"].all("img")
    assert data_uri_image(portrait).size == (56, 112)
    for img in root.all("img"):
        width, height = data_uri_image(img).size
        assert max(width, height) == contact_sheet.THUMBNAIL_SIDE
        # Cards stay out of the live page until their group is opened.
        assert "template" in img.ancestors()


def test_names_are_escaped_and_nothing_comes_from_the_network(tmp_path, tagged_run):
    entries, failed, ignored = tagged_run
    path, _ = write(tmp_path, entries, failed, ignored, title="Trip <1> & 'co'")
    text = path.read_text(encoding="utf-8")
    assert NASTY_NAME not in text
    assert "<b>" not in text and "&lt;b&gt;&amp;amp; café 東京.jpg" in text
    assert "Trip &lt;1&gt; &amp; &#x27;co&#x27;" in text
    root = parse(path)
    (card,) = [c for c in cards_of(root) if card_name(c) == NASTY_NAME]
    assert card.attrs["title"] == str(tmp_path / "photos" / NASTY_NAME)

    for node in root.all("img") + root.all("a") + root.all("script") + root.all("link"):
        for attribute in ("src", "href"):
            value = node.attrs.get(attribute, "")
            assert not value.lower().startswith(("http:", "https:", "//")), value
    assert all(a.attrs["href"].startswith("#") for a in root.all("a"))
    assert root.all("link") == [] and all("src" not in s.attrs for s in root.all("script"))
    assert "url(" not in text and "@import" not in text


def test_from_row_and_the_threshold_check(tmp_path):
    tagged = Row(file="/a/b.jpg", label="Louvre", score=0.9, top=[("Louvre", 0.9)])
    assert SheetEntry.from_row(tagged) == SheetEntry("/a/b.jpg", "Louvre", 0.9)
    rejected = Row(file="/a/c.jpg", label=NO_LANDMARK_NAME, score=0.2, top=[("Louvre", 0.2)])
    assert SheetEntry.from_row(rejected) == SheetEntry("/a/c.jpg", "Louvre", 0.2, rejected=True)
    raw = Row("/a/d.cr2", "Louvre", 0.9, [("Louvre", 0.9)], tagged_from="/a/d.jpg")
    assert SheetEntry.from_row(raw).thumbnail_from == "/a/d.jpg"
    with pytest.raises(UserError, match=r"within \[0, 1\]"):
        write(tmp_path, [], low_confidence_below=1.5)


def test_a_raw_file_shows_its_twins_thumbnail(tmp_path):
    twin = tmp_path / "d.jpg"
    twin.write_bytes(photo(1))
    (tmp_path / "d.cr2").write_bytes(b"II*\0 raw data")
    entries = [SheetEntry(str(tmp_path / "d.cr2"), "Louvre", 0.9, thumbnail_from=str(twin))]
    _, summary = write(tmp_path, entries)
    assert summary.thumbnails_missing == 0


def test_many_groups_are_rendered_a_chunk_at_a_time(tmp_path):
    source = tmp_path / "p.jpg"
    source.write_bytes(photo(1, (160, 120)))
    count = contact_sheet.CHUNK * 2 + 5
    entries = [SheetEntry(f"{tmp_path}/{i}.jpg", "Louvre", 0.9) for i in range(count)]
    entries = [SheetEntry(e.path, e.label, e.score, thumbnail_from=str(source)) for e in entries]
    path, summary = write(tmp_path, entries)
    group = parse(path).all("section")[1].all("details")[1]
    templates = [child for child in group.children if child.tag == "template"]
    assert [len(cards_of(t)) for t in templates] == [contact_sheet.CHUNK] * 2 + [5]
    assert group.all("button")[0].attrs["class"] == "more"
    assert summary.counts["landmarks"] == count


def test_a_sheet_of_1000_photos_is_at_most_10_mb(tmp_path):
    """1,000 photo-like 640x480 JPEGs (20 distinct ones, under 1,000 names)."""
    folder = tmp_path / "photos"
    folder.mkdir()
    distinct = [photo(seed) for seed in range(20)]
    labels = ["Eiffel Tower", "Louvre", "Notre-Dame", "Sacré-Cœur", "Arc de Triomphe"]
    rng = np.random.default_rng(0)
    entries = []
    for i in range(1000):
        path = folder / f"IMG_{i:04d}.jpg"
        path.write_bytes(distinct[i % len(distinct)])
        score = float(rng.uniform(0.05, 1.0))
        rejected = score < 0.25
        entries.append(SheetEntry(str(path), labels[i % len(labels)], score, rejected=rejected))
    start = time.perf_counter()
    path, summary = write(tmp_path, entries, workers=2)
    seconds = time.perf_counter() - start
    assert summary.thumbnails_missing == 0
    assert sum(summary.counts.values()) == 1000
    assert summary.bytes <= 10_000_000, f"{summary.bytes / 1e6:.1f} MB for 1,000 photos"
    print(f"\n1,000 photos: {summary.bytes / 1e6:.2f} MB in {seconds:.1f} s")
