"""lmrec.data.gldv2_download against a fake GLDv2 mirror served on 127.0.0.1 (and file://).

The mirror has the official layout (metadata/*.csv, train/images_NNN.tar,
md5sum/train/md5.images_NNN.txt). The test server implements HTTP Range itself
(the stdlib handler does not) and records every request, so resumes are seen
on the wire, not inferred from the result.
"""

from __future__ import annotations

import hashlib
import http.server
import io
import os
import pathlib
import re
import socket
import tarfile
import threading
import urllib.parse

import pytest

from lmrec.config import PrepareConfig
from lmrec.data import gldv2_download
from lmrec.data.sources import gldv2
from lmrec.errors import UserError
from tests import fake_gldv2

# Image ids (16 hex) per tar; WANTED mixes both tars and one id that is in none.
TAR_IDS = {
    0: ["0123456789abcdef", "0124aaaaaaaaaaaa", "fedcba9876543210"],
    1: ["abc0000000000001", "abc0000000000002", "5555555555555555"],
}
ABSENT_ID = "9999999999999999"
WANTED = {"0123456789abcdef", "fedcba9876543210", "abc0000000000002", ABSENT_ID}
LABELS = gldv2_download.LABEL_CSV


@pytest.fixture
def mirror(tmp_path):
    """A fake mirror folder; returns {"root", "images": {id: bytes}, "tars": {n: bytes}}."""
    root = tmp_path / "mirror"
    images = {
        image_id: fake_gldv2.jpeg(((number * 10 + i) * 40 % 256, 90, 200))
        for number, ids in TAR_IDS.items()
        for i, image_id in enumerate(ids)
    }
    tars = fake_gldv2.write_mirror(
        root,
        {
            number: {image_id: (images[image_id], i % 2) for i, image_id in enumerate(ids)}
            for number, ids in TAR_IDS.items()
        },
        categories={0: "A"},
        prefixed=frozenset({1}),  # tar 0 stores a/b/c/<id>.jpg as the official tars do
    )
    return {"root": root, "images": images, "tars": tars}


class _MirrorServer(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, root: pathlib.Path, honor_range: bool):
        super().__init__(("127.0.0.1", 0), _RangeHandler)
        self.root = root
        self.honor_range = honor_range
        self.cut_once: set[str] = set()  # paths whose next answer breaks off half-way
        self.no_length: set[str] = set()  # paths answered without Content-Length
        self.requests: list[dict] = []  # {"path", "range", "status", "sent"}
        self.lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def gets(self, suffix: str) -> list[dict]:
        with self.lock:
            return [r for r in self.requests if r["path"].endswith(suffix)]


class _RangeHandler(http.server.BaseHTTPRequestHandler):
    """Serves files under server.root, with Range support unless server.honor_range is off."""

    server: _MirrorServer

    def do_GET(self):  # noqa: N802 - the name http.server calls.
        relative = urllib.parse.unquote(urllib.parse.urlparse(self.path).path).lstrip("/")
        file = (self.server.root / relative).resolve()
        range_header = self.headers.get("Range")
        if not file.is_file() or self.server.root.resolve() not in file.parents:
            return self._answer(relative, range_header, 404, b"", {})
        data = file.read_bytes()
        match = re.fullmatch(r"bytes=(\d+)-(\d*)", range_header or "")
        if match and self.server.honor_range:
            start = int(match.group(1))
            end = int(match.group(2)) if match.group(2) else len(data) - 1
            if start >= len(data):
                return self._answer(
                    relative, range_header, 416, b"", {"Content-Range": f"bytes */{len(data)}"}
                )
            body = data[start : end + 1]
            headers = {"Content-Range": f"bytes {start}-{start + len(body) - 1}/{len(data)}"}
            return self._answer(relative, range_header, 206, body, headers)
        return self._answer(relative, range_header, 200, data, {})

    def _answer(self, relative, range_header, status, body, headers):
        cut = False
        with self.server.lock:
            if relative in self.server.cut_once and status in (200, 206):
                self.server.cut_once.discard(relative)
                cut = True
        sent = body[: len(body) // 2] if cut else body
        # Recorded before answering: the client may check the log as soon as it has the bytes.
        with self.server.lock:
            self.server.requests.append(
                {"path": relative, "range": range_header, "status": status, "sent": len(sent)}
            )
        self.send_response(status)
        if relative in self.server.no_length:
            self.close_connection = True  # the body ends where the connection does
        else:
            self.send_header("Content-Length", str(len(body)))
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(sent)
        self.wfile.flush()
        if cut:
            self.close_connection = True

    def log_message(self, *args):
        pass


@pytest.fixture
def serve():
    """serve(root, honor_range=True) -> a running _MirrorServer, stopped after the test."""
    servers = []

    def start(root: pathlib.Path, honor_range: bool = True) -> _MirrorServer:
        server = _MirrorServer(root, honor_range)
        threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def _tar_remote(base_url: str, number: int = 0) -> gldv2_download.RemoteFile:
    return gldv2_download.official_files(base_url, [number], [])[0]


def _files_under(folder: pathlib.Path) -> set[str]:
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}


def _image_relative(image_id: str) -> str:
    return f"{'/'.join(image_id[:3])}/{image_id}.jpg"


def test_official_files_follow_the_official_layout():
    files = gldv2_download.official_files(
        "https://s3.amazonaws.com/google-landmark/", [0, 17], ["train_clean.csv", "train"]
    )
    base = "https://s3.amazonaws.com/google-landmark"
    assert [(f.url, f.path, f.md5_url) for f in files] == [
        (f"{base}/metadata/train_clean.csv", "train_clean.csv", None),
        (f"{base}/metadata/train.csv", "train.csv", None),
        (
            f"{base}/train/images_000.tar",
            os.path.join("tars", "images_000.tar"),
            f"{base}/md5sum/train/md5.images_000.txt",
        ),
        (
            f"{base}/train/images_017.tar",
            os.path.join("tars", "images_017.tar"),
            f"{base}/md5sum/train/md5.images_017.txt",
        ),
    ]
    assert files[2].md5_path == os.path.join("tars", "md5.images_000.txt")


def test_parse_tar_list():
    assert gldv2_download.parse_tar_list("all") == list(range(500))
    assert gldv2_download.parse_tar_list(" 17, 0-3 ,2") == [0, 1, 2, 3, 17]
    assert gldv2_download.parse_tar_list("499") == [499]


@pytest.mark.parametrize("text", ["", "abc", "5-2", "0-500", "1,,2", "-3", "1-2-3"])
def test_bad_tar_list_names_the_flag(text):
    with pytest.raises(UserError, match="--gldv2_tars"):
        gldv2_download.parse_tar_list(text)


def test_download_verifies_md5_and_extracts_only_wanted_images(mirror, serve, tmp_path):
    server = serve(mirror["root"])
    gldv2_dir = tmp_path / "gldv2"
    files = gldv2_download.official_files(server.url, [0, 1], ["train", LABELS])
    summary = gldv2_download.download(files, str(gldv2_dir), jobs=2, verbose=False)

    assert len(summary.fetched) == 4 and not summary.skipped
    for number, data in mirror["tars"].items():
        assert (gldv2_dir / "tars" / f"images_{number:03d}.tar").read_bytes() == data
    assert (gldv2_dir / "train.csv").read_bytes() == (
        mirror["root"] / "metadata" / "train.csv"
    ).read_bytes()
    assert not list(gldv2_dir.rglob("*.part"))

    total = gldv2_download.ExtractCounts()
    for number in TAR_IDS:
        tar = gldv2_dir / "tars" / f"images_{number:03d}.tar"
        total.add(gldv2_download.extract_selected(str(tar), WANTED, str(gldv2_dir)))
    on_disk = WANTED - {ABSENT_ID}
    assert _files_under(gldv2_dir / "train") == {_image_relative(i) for i in on_disk}
    for image_id in on_disk:
        path = gldv2_dir / "train" / _image_relative(image_id)
        assert path.read_bytes() == mirror["images"][image_id]
    assert (total.extracted, total.present, total.unwanted, total.rejected) == (3, 0, 3, [])

    # A rerun fetches nothing: every file is complete and its md5 matches.
    requests_before = len(server.requests)
    again = gldv2_download.download(files, str(gldv2_dir), jobs=2, verbose=False)
    assert len(again.skipped) == 4 and not again.fetched and again.bytes_downloaded == 0
    assert len(server.requests) == requests_before


def test_resume_sends_range_and_completes_the_part(mirror, serve, tmp_path):
    server = serve(mirror["root"])
    data = mirror["tars"][0]
    half = len(data) // 2
    part = tmp_path / "gldv2" / "tars" / "images_000.tar.part"
    part.parent.mkdir(parents=True)
    part.write_bytes(data[:half])

    result = gldv2_download.fetch(_tar_remote(server.url), str(tmp_path / "gldv2"))

    assert result.status == "resumed"
    assert (tmp_path / "gldv2" / "tars" / "images_000.tar").read_bytes() == data
    assert not part.exists()
    [request] = server.gets("images_000.tar")
    assert request["range"] == f"bytes={half}-"
    assert (request["status"], request["sent"]) == (206, len(data) - half)


def test_interrupted_transfer_keeps_the_part_and_a_rerun_resumes(mirror, serve, tmp_path):
    server = serve(mirror["root"])
    data = mirror["tars"][0]
    server.cut_once.add("train/images_000.tar")
    dest = tmp_path / "gldv2"
    part = dest / "tars" / "images_000.tar.part"

    with pytest.raises(UserError, match=r"broke off.*images_000\.tar\.part"):
        gldv2_download.fetch(_tar_remote(server.url), str(dest), retries=0)
    assert part.read_bytes() == data[: len(data) // 2]
    assert not (dest / "tars" / "images_000.tar").exists()

    gldv2_download.fetch(_tar_remote(server.url), str(dest), retries=0)
    first, second = server.gets("images_000.tar")
    assert first["range"] is None and first["sent"] == len(data) // 2
    assert second["range"] == f"bytes={len(data) // 2}-" and second["status"] == 206
    assert (dest / "tars" / "images_000.tar").read_bytes() == data


def test_broken_transfer_is_resumed_within_one_call(mirror, serve, tmp_path):
    server = serve(mirror["root"])
    server.cut_once.add("train/images_001.tar")
    result = gldv2_download.fetch(_tar_remote(server.url, 1), str(tmp_path), retries=1)
    assert result.path == str(tmp_path / "tars" / "images_001.tar")
    assert pathlib.Path(result.path).read_bytes() == mirror["tars"][1]
    assert [r["status"] for r in server.gets("images_001.tar")] == [200, 206]


def test_server_ignoring_range_restarts_from_zero(mirror, serve, tmp_path):
    server = serve(mirror["root"], honor_range=False)
    data = mirror["tars"][0]
    part = tmp_path / "tars" / "images_000.tar.part"
    part.parent.mkdir(parents=True)
    part.write_bytes(data[: len(data) // 2])

    gldv2_download.fetch(_tar_remote(server.url), str(tmp_path))

    [request] = server.gets("images_000.tar")
    assert request["range"] is not None  # it was asked to resume ...
    assert (request["status"], request["sent"]) == (200, len(data))  # ... and sent everything
    # Appending the full answer to the half .part would give 1.5x the bytes and a bad md5.
    assert (tmp_path / "tars" / "images_000.tar").read_bytes() == data
    assert not part.exists()


def test_md5_mismatch_is_rejected_and_leaves_nothing(mirror, serve, tmp_path):
    wrong = hashlib.md5(b"something else").hexdigest()
    (mirror["root"] / "md5sum" / "train" / "md5.images_000.txt").write_text(
        f"{wrong}  images_000.tar\n"
    )
    server = serve(mirror["root"])
    actual = hashlib.md5(mirror["tars"][0]).hexdigest()

    with pytest.raises(UserError) as raised:
        gldv2_download.fetch(_tar_remote(server.url), str(tmp_path))

    message = str(raised.value)
    assert "md5 mismatch" in message and "images_000.tar" in message
    assert wrong in message and actual in message
    assert not (tmp_path / "tars" / "images_000.tar").exists()
    assert not (tmp_path / "tars" / "images_000.tar.part").exists()


def test_complete_file_with_a_wrong_md5_is_reported_not_deleted(mirror, serve, tmp_path):
    server = serve(mirror["root"])
    tar = tmp_path / "tars" / "images_000.tar"
    tar.parent.mkdir(parents=True)
    tar.write_bytes(b"the user's own bytes")
    with pytest.raises(UserError, match="delete it and rerun"):
        gldv2_download.fetch(_tar_remote(server.url), str(tmp_path))
    assert tar.read_bytes() == b"the user's own bytes"
    assert not server.gets("images_000.tar")


def test_offline_error_names_the_url_and_where_to_put_the_file(tmp_path):
    with socket.socket() as probe:  # a port nothing listens on once closed
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"http://127.0.0.1:{port}/google-landmark/metadata/train.csv"
    remote = gldv2_download.RemoteFile(url, "train.csv")

    with pytest.raises(UserError) as raised:
        gldv2_download.download([remote], str(tmp_path), jobs=1, verbose=False)

    message = str(raised.value)
    assert url in message and "may be offline" in message
    assert str(tmp_path / "train.csv") in message
    assert not (tmp_path / "train.csv").exists()


def test_http_404_names_the_url(mirror, serve, tmp_path):
    server = serve(mirror["root"])
    remote = _tar_remote(server.url, 7)  # the mirror has no tar 7 (nor its md5 list)
    with pytest.raises(UserError, match=r"md5\.images_007\.txt.*HTTP 404"):
        gldv2_download.fetch(remote, str(tmp_path))


def test_file_url_mirror_downloads_and_resumes(mirror, tmp_path):
    base = mirror["root"].as_uri()
    data = mirror["tars"][1]
    part = tmp_path / "tars" / "images_001.tar.part"
    part.parent.mkdir(parents=True)
    part.write_bytes(data[:100])

    files = gldv2_download.official_files(base, [0, 1], ["train"])
    summary = gldv2_download.download(files, str(tmp_path), jobs=2, verbose=False)

    assert len(summary.fetched) == 3
    assert (tmp_path / "tars" / "images_000.tar").read_bytes() == mirror["tars"][0]
    assert (tmp_path / "tars" / "images_001.tar").read_bytes() == data
    # 100 bytes came from the .part: the rest of tar 1, all of tar 0, the CSV and md5 lists.
    md5_lists = sum(len(p.read_bytes()) for p in (tmp_path / "tars").glob("md5.*.txt"))
    csv = len((tmp_path / "train.csv").read_bytes())
    assert summary.bytes_downloaded == len(mirror["tars"][0]) + len(data) - 100 + md5_lists + csv


def test_malicious_member_paths_stay_inside_the_images_folder(tmp_path):
    good_id, other_id, link_id = "0000000000000aaa", "1111111111111bbb", "2222222222222ccc"
    tar = tmp_path / "evil.tar"
    with tarfile.open(tar, "w") as archive:
        fake_gldv2.add_member(archive, "../../evil.jpg", b"evil")
        fake_gldv2.add_member(archive, f"../../{good_id}.jpg", b"good")
        fake_gldv2.add_member(archive, f"/tmp/{other_id}.jpg", b"other")
        fake_gldv2.add_member(archive, "0/0/0/NOTHEX0000000000.jpg", b"not hex")
        fake_gldv2.add_member(archive, "0/0/0/00000000000000.jpg", b"too short")
        link = tarfile.TarInfo(f"2/2/2/{link_id}.jpg")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        archive.addfile(link)
    gldv2_dir = tmp_path / "deep" / "gldv2"

    counts = gldv2_download.extract_selected(str(tar), None, str(gldv2_dir))

    assert _files_under(tmp_path) == {
        "evil.tar",
        f"deep/gldv2/train/{_image_relative(good_id)}",
        f"deep/gldv2/train/{_image_relative(other_id)}",
    }
    assert (gldv2_dir / "train" / _image_relative(good_id)).read_bytes() == b"good"
    assert not (gldv2_dir / "train" / _image_relative(link_id)).is_symlink()
    assert counts.extracted == 2 and len(counts.rejected) == 4


def test_extract_keeps_images_already_on_disk(mirror, tmp_path):
    tar = mirror["root"] / "train" / "images_000.tar"
    image_id = TAR_IDS[0][0]
    existing = tmp_path / "train" / _image_relative(image_id)
    existing.parent.mkdir(parents=True)
    existing.write_bytes(b"the user's copy")

    counts = gldv2_download.extract_selected(str(tar), set(TAR_IDS[0]), str(tmp_path))

    assert (counts.extracted, counts.present) == (2, 1)
    assert existing.read_bytes() == b"the user's copy"


def test_damaged_tar_is_a_user_error(tmp_path):
    tar = tmp_path / "images_000.tar"
    tar.write_bytes(b"not a tar at all" * 100)
    with pytest.raises(UserError, match="images_000.tar"):
        gldv2_download.extract_selected(str(tar), None, str(tmp_path))


def test_download_gldv2_end_to_end_deletes_tars_and_skips_them_on_rerun(
    mirror, serve, tmp_path, monkeypatch
):
    server = serve(mirror["root"])
    seen_csvs = []

    def selected_image_ids(options, seed):
        # Stands in for the selection (tested in test_gldv2.py): the CSVs must be there when
        # it runs.
        seen_csvs.append(sorted(os.listdir(options.gldv2_dir)))
        return set(WANTED)

    monkeypatch.setattr(gldv2, "selected_image_ids", selected_image_ids)
    gldv2_dir = tmp_path / "gldv2"
    config = PrepareConfig.build(
        source="gldv2",
        gldv2_dir=str(gldv2_dir),
        gldv2_url=server.url,
        gldv2_tars="0-1",
        download_jobs=2,
    )

    summary = gldv2_download.download_gldv2(config, keep_tars=False, verbose=False)

    assert seen_csvs == [["train.csv", "train_label_to_category.csv"]]
    assert _files_under(gldv2_dir / "train") == {_image_relative(i) for i in WANTED - {ABSENT_ID}}
    assert not list(gldv2_dir.rglob("*.tar")) and summary.tars_deleted == 2
    assert (summary.images.extracted, summary.images_wanted, summary.images_missing) == (3, 4, 1)
    assert "wanted but not found in the fetched tars (nor on disk): 1" in summary.describe()

    # The rerun neither downloads nor extracts the deleted tars again.
    tar_requests = len(server.gets(".tar"))
    again = gldv2_download.download_gldv2(config, keep_tars=False, verbose=False)
    assert len(server.gets(".tar")) == tar_requests
    assert (again.tars_done_before, again.images.extracted, again.images_missing) == (2, 0, 1)


def _compressed(tmp_path: pathlib.Path, kind: str) -> pathlib.Path:
    """images_000.tar holding one image, compressed as `kind` (zstd/lz4: their magic only)."""
    tar = tmp_path / "images_000.tar"
    modes = {"gzip": "w:gz", "bzip2": "w:bz2", "xz": "w:xz"}
    if kind in modes:
        with tarfile.open(tar, modes[kind]) as archive:
            fake_gldv2.add_member(archive, _image_relative(TAR_IDS[0][0]), b"\0" * 4096)
    else:
        magic = {"zstd": b"\x28\xb5\x2f\xfd", "lz4": b"\x04\x22\x4d\x18"}[kind]
        tar.write_bytes(magic + b"\0" * 1024)
    return tar


@pytest.mark.parametrize("kind", ["gzip", "bzip2", "xz", "zstd", "lz4"])
def test_a_compressed_tar_is_refused_not_expanded(tmp_path, kind):
    tar = _compressed(tmp_path, kind)
    with pytest.raises(UserError, match=rf"images_000\.tar is {kind}-compressed, not a plain tar"):
        gldv2_download.extract_selected(str(tar), None, str(tmp_path / "gldv2"))
    assert not (tmp_path / "gldv2").exists()


def _sparse_tar(path: pathlib.Path, big_id: str, big_size: int, after: dict[str, bytes]) -> None:
    """A tar whose first member, <big_id>.jpg, claims big_size bytes of zeros: its data is a
    hole in the file (no disk used), and the members in `after` follow it."""
    with open(path, "wb") as f:
        big = tarfile.TarInfo(_image_relative(big_id))
        big.size = big_size
        f.write(big.tobuf())
        f.seek(-(-big_size // tarfile.BLOCKSIZE) * tarfile.BLOCKSIZE, os.SEEK_CUR)
        for name, data in after.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            f.write(info.tobuf() + data + b"\0" * (-len(data) % tarfile.BLOCKSIZE))
        f.write(b"\0" * 2 * tarfile.BLOCKSIZE)


def test_a_member_over_the_size_cap_is_skipped_and_counted(tmp_path):
    big_id, small_id = "b000000000000000", "5000000000000000"
    tar = tmp_path / "images_000.tar"
    _sparse_tar(tar, big_id, 300 << 20, {_image_relative(small_id): b"small image"})
    gldv2_dir = tmp_path / "gldv2"

    counts = gldv2_download.extract_selected(str(tar), None, str(gldv2_dir))

    assert counts.extracted == 1  # extraction went on past the large member
    [rejected] = counts.rejected
    assert big_id in rejected and "(300MB, over the 64.0MB cap)" in rejected
    assert _files_under(gldv2_dir) == {f"train/{_image_relative(small_id)}"}
    summary = gldv2_download.GLDv2Summary(gldv2_download.DownloadSummary(), counts)
    assert big_id in summary.describe()


def test_the_size_cap_is_a_parameter(tmp_path):
    at_cap, over_cap = "a000000000000001", "a000000000000002"
    tar = tmp_path / "images_000.tar"
    fake_gldv2.write_tar(
        tar, {_image_relative(at_cap): b"x" * 1000, _image_relative(over_cap): b"y" * 1001}
    )
    counts = gldv2_download.extract_selected(str(tar), None, str(tmp_path), max_member_bytes=1000)
    assert counts.extracted == 1 and len(counts.rejected) == 1 and over_cap in counts.rejected[0]
    assert _files_under(tmp_path / "train") == {_image_relative(at_cap)}


def test_member_data_past_its_declared_size_is_not_written(tmp_path, monkeypatch):
    """The copy itself stops at the cap, whatever size the header gives."""
    image_id = "c000000000000000"
    tar = tmp_path / "images_000.tar"
    fake_gldv2.write_tar(tar, {_image_relative(image_id): b"tiny"})
    sources = []

    class Endless(io.BytesIO):
        """Far more data than the 4 bytes the header declares; counts what is read."""

        taken = 0

        def read(self, size=-1):
            chunk = super().read(size)
            self.taken += len(chunk)
            return chunk

    def extractfile(self, member):
        sources.append(Endless(b"z" * 5000))
        return sources[-1]

    monkeypatch.setattr(tarfile.TarFile, "extractfile", extractfile)
    counts = gldv2_download.extract_selected(str(tar), None, str(tmp_path), max_member_bytes=1000)

    assert counts.extracted == 0 and len(counts.rejected) == 1 and image_id in counts.rejected[0]
    assert [source.taken for source in sources] == [1001]  # one byte past the cap, no more
    assert not (tmp_path / "train").exists() or _files_under(tmp_path / "train") == set()


BAD_CSVS = {
    "html": (b"<!DOCTYPE html>\n<html><body>Sign in to the Wi-Fi</body></html>\n", "HTML page"),
    "html after blanks": (b"\n  <html><body>503</body></html>\n", "HTML page"),
    "empty": (b"", "empty"),
    "not utf-8": (b"id,url,landmark_id\n\xff\xfe\x00,http://x,1\n", "not UTF-8"),
    "cut inside a utf-8 character": (b"id,url,landmark_id\nabc,http://x/\xc3", "not UTF-8"),
    "another header": (b"landmark_id,images\n1,abc\n", "its header is 'landmark_id,images'"),
    "header only": (b"id,url,landmark_id\n", "no rows after its header"),
    "cut mid-row": (b"id,url,landmark_id\nabc,http://x,1\nabd,http://", "end with a newline"),
    "short last row": (b"id,url,landmark_id\nabc,http://x,1\nabd\n", "last row has 1 fields"),
}


@pytest.mark.parametrize("case", sorted(BAD_CSVS))
def test_a_csv_that_is_not_whole_is_deleted_not_kept(tmp_path, case):
    content, why = BAD_CSVS[case]
    mirror = tmp_path / "mirror" / "metadata"
    mirror.mkdir(parents=True)
    (mirror / "train.csv").write_bytes(content)
    [remote] = gldv2_download.official_files((tmp_path / "mirror").as_uri(), [], ["train"])
    dest = tmp_path / "gldv2"

    with pytest.raises(UserError) as raised:
        gldv2_download.fetch(remote, str(dest))

    message = str(raised.value)
    assert why in message and "train.csv" in message and "rerun to fetch it again" in message
    assert _files_under(dest) == set()  # neither train.csv nor train.csv.part


GOOD_CSVS = {
    "crlf line ends": (
        LABELS,
        b"landmark_id,category\r\n1,http://commons.wikimedia.org/wiki/Category:A\r\n",
    ),
    "quoted commas": (LABELS, b'landmark_id,category\n1,"a, b"\n2,"say ""hi"", then go"\n'),
    # Longer than the csv module's 128 kB field limit, as the largest train_clean rows are.
    "a very long last row": (
        "train_clean",
        b"landmark_id,images\n7," + b" ".join([b"0123456789abcdef"] * 20000) + b"\n",
    ),
}


@pytest.mark.parametrize("case", sorted(GOOD_CSVS))
def test_a_whole_csv_is_kept(tmp_path, case):
    name, content = GOOD_CSVS[case]
    mirror = tmp_path / "mirror" / "metadata"
    mirror.mkdir(parents=True)
    (mirror / f"{name}.csv").write_bytes(content)
    [remote] = gldv2_download.official_files((tmp_path / "mirror").as_uri(), [], [name])
    result = gldv2_download.fetch(remote, str(tmp_path / "gldv2"))
    assert pathlib.Path(result.path).read_bytes() == content


def test_an_html_page_served_as_train_csv_fails_and_a_rerun_fetches_it_again(
    mirror, serve, tmp_path
):
    server = serve(mirror["root"])
    real = (mirror["root"] / "metadata" / "train.csv").read_bytes()
    (mirror["root"] / "metadata" / "train.csv").write_text(
        "<html><head><title>Hotel Wi-Fi</title></head><body>Accept the terms</body></html>\n"
    )
    files = gldv2_download.official_files(server.url, [], ["train", LABELS])
    dest = tmp_path / "gldv2"

    with pytest.raises(UserError, match=r"metadata/train\.csv did not give a whole train\.csv"):
        gldv2_download.download(files, str(dest), jobs=2, verbose=False)
    assert _files_under(dest) == {f"{LABELS}.csv"}  # the good CSV is kept, the page is not

    (mirror["root"] / "metadata" / "train.csv").write_bytes(real)
    again = gldv2_download.download(files, str(dest), jobs=2, verbose=False)
    assert again.fetched == [str(dest / "train.csv")] and len(again.skipped) == 1
    assert (dest / "train.csv").read_bytes() == real
    assert len(server.gets("metadata/train.csv")) == 2


def test_a_csv_cut_mid_row_without_content_length_fails(mirror, serve, tmp_path):
    server = serve(mirror["root"])
    real = (mirror["root"] / "metadata" / "train.csv").read_bytes()
    assert not real[: len(real) // 2].endswith(b"\n")  # the cut falls inside a row
    server.no_length.add("metadata/train.csv")
    server.cut_once.add("metadata/train.csv")
    [remote] = gldv2_download.official_files(server.url, [], ["train"])
    dest = tmp_path / "gldv2"

    with pytest.raises(UserError, match="does not end with a newline"):
        gldv2_download.fetch(remote, str(dest))
    assert _files_under(dest) == set()
    assert server.gets("metadata/train.csv")[0]["sent"] == len(real) // 2

    result = gldv2_download.fetch(remote, str(dest))  # whole this time, still no length
    assert result.status == "fetched" and (dest / "train.csv").read_bytes() == real


def _one_image_config(monkeypatch, gldv2_dir, url) -> PrepareConfig:
    monkeypatch.setattr(gldv2, "selected_image_ids", lambda options, seed: {TAR_IDS[0][0]})
    return PrepareConfig.build(
        source="gldv2", gldv2_dir=str(gldv2_dir), gldv2_url=url, gldv2_tars="0"
    )


def test_a_plain_http_url_is_warned_about(mirror, serve, tmp_path, monkeypatch, capsys):
    server = serve(mirror["root"])
    config = _one_image_config(monkeypatch, tmp_path / "gldv2", server.url)

    summary = gldv2_download.download_gldv2(config, verbose=False)

    warnings = [line for line in capsys.readouterr().err.splitlines() if "warning" in line]
    assert len(warnings) == 1 and f"--gldv2_url={server.url} uses plain http://" in warnings[0]
    assert summary.warnings and f"warning: {summary.warnings[0]}" in summary.describe()
    assert summary.images.extracted == 1


def test_a_file_url_is_not_warned_about(mirror, tmp_path, monkeypatch, capsys):
    config = _one_image_config(monkeypatch, tmp_path / "gldv2", mirror["root"].as_uri())
    summary = gldv2_download.download_gldv2(config, verbose=False)
    assert "warning" not in capsys.readouterr().err and summary.warnings == []
    assert "warning" not in summary.describe()
