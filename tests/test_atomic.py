"""Files are replaced whole and durably: data synced before the rename, the folder after;
a rewrite keeps the file's mode and symlink; a link or copy keeps its content."""

from __future__ import annotations

import os
import stat

import pytest

from lmrec import atomic


@pytest.mark.parametrize("links", [True, False])
def test_link_or_copy_keeps_the_content_when_the_source_is_replaced(tmp_path, monkeypatch, links):
    source, target = str(tmp_path / "last.weights.h5"), str(tmp_path / "best.weights.h5")
    atomic.write_bytes(source, b"epoch 3")
    atomic.write_bytes(target, b"epoch 1")
    if not links:  # a filesystem without hard links: a copy instead

        def no_link(*args):
            raise OSError("links not supported")

        monkeypatch.setattr(os, "link", no_link)
    atomic.link_or_copy(source, target)
    assert open(target, "rb").read() == b"epoch 3"
    assert os.path.samefile(source, target) is links
    atomic.write_bytes(source, b"epoch 4")  # the next epoch's last weights
    assert open(target, "rb").read() == b"epoch 3"
    assert sorted(os.listdir(tmp_path)) == ["best.weights.h5", "last.weights.h5"]


def _record_syncs(monkeypatch) -> list[tuple]:
    """Records fsyncs (by the inode synced) and renames, in order."""
    events: list[tuple] = []
    real_fsync, real_replace, real_rename = os.fsync, os.replace, os.rename

    def fsync(fd):
        events.append(("fsync", os.fstat(fd).st_ino))
        real_fsync(fd)

    def replace(src, dst):
        events.append(("rename", os.stat(src).st_ino))
        real_replace(src, dst)

    def rename(src, dst):
        events.append(("rename", os.stat(src).st_ino))
        real_rename(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    monkeypatch.setattr(os, "rename", rename)
    return events


@pytest.mark.parametrize("write", ["write_json", "replacing", "link_or_copy"])
def test_the_data_is_synced_before_the_rename_and_the_folder_after(tmp_path, monkeypatch, write):
    path = str(tmp_path / "resume" / "state.json")
    source = str(tmp_path / "source.json")
    atomic.write_json(source, {"epoch": 2})
    events = _record_syncs(monkeypatch)
    if write == "write_json":
        atomic.write_json(path, {"epoch": 3})
    elif write == "replacing":
        with atomic.replacing(path) as tmp, open(tmp, "w") as f:
            f.write("{}")
    else:
        atomic.link_or_copy(source, path)
    file_inode, folder_inode = os.stat(path).st_ino, os.stat(os.path.dirname(path)).st_ino
    assert events == [("fsync", file_inode), ("rename", file_inode), ("fsync", folder_inode)]


def test_a_new_directory_syncs_its_files_and_folders_then_the_parent(tmp_path, monkeypatch):
    path = tmp_path / "export" / "1"
    (tmp_path / "export").mkdir()
    events = _record_syncs(monkeypatch)
    with atomic.new_directory(str(path)) as tmp:
        os.makedirs(os.path.join(tmp, "variables"))
        with open(os.path.join(tmp, "variables", "data"), "wb") as f:
            f.write(b"weights")
        with open(os.path.join(tmp, "saved_model.pb"), "wb") as f:
            f.write(b"graph")
    inode = {name: os.stat(path / name).st_ino for name in ("variables/data", "saved_model.pb")}
    inode.update(variables=os.stat(path / "variables").st_ino, folder=os.stat(path).st_ino)
    synced = [value for kind, value in events[:-2] if kind == "fsync"]
    assert sorted(synced) == sorted(inode.values())
    assert synced.index(inode["variables/data"]) < synced.index(inode["variables"])
    assert synced.index(inode["variables"]) < synced.index(inode["folder"])
    parent = os.stat(tmp_path / "export").st_ino
    assert events[-2:] == [("rename", inode["folder"]), ("fsync", parent)]


def test_a_folder_that_cannot_be_opened_for_sync_is_skipped(tmp_path, monkeypatch):
    real_open = os.open

    def no_folders(path, flags, *args):  # what Windows does
        if os.path.isdir(path):
            raise PermissionError(13, "Permission denied", path)
        return real_open(path, flags, *args)

    monkeypatch.setattr(os, "open", no_folders)
    atomic.write_text(str(tmp_path / "a.txt"), "new")
    assert open(tmp_path / "a.txt").read() == "new"


def test_a_symlinked_file_stays_a_link_and_its_target_gets_the_content(tmp_path):
    (tmp_path / "sidecars").mkdir()
    target = tmp_path / "sidecars" / "IMG_1.xmp"
    target.write_text("old")
    link = tmp_path / "IMG_1.xmp"
    link.symlink_to(os.path.join("sidecars", "IMG_1.xmp"))
    atomic.write_text(str(link), "new")
    assert os.path.islink(link) and os.readlink(link) == os.path.join("sidecars", "IMG_1.xmp")
    assert target.read_text() == "new"
    assert sorted(os.listdir(tmp_path)) == ["IMG_1.xmp", "sidecars"]
    assert os.listdir(tmp_path / "sidecars") == ["IMG_1.xmp"]


def test_a_rewritten_file_keeps_its_mode_and_a_new_one_follows_the_umask(tmp_path):
    sidecar = tmp_path / "IMG_1.xmp"
    sidecar.write_text("old")
    os.chmod(sidecar, 0o640)
    atomic.write_text(str(sidecar), "new")
    assert stat.S_IMODE(os.stat(sidecar).st_mode) == 0o640
    old_mask = os.umask(0o027)
    try:
        atomic.write_text(str(tmp_path / "new.json"), "{}")
    finally:
        os.umask(old_mask)
    assert stat.S_IMODE(os.stat(tmp_path / "new.json").st_mode) == 0o640


def test_temp_names_are_recognised_and_partials_of_other_names_are_kept(tmp_path):
    with atomic.replacing(str(tmp_path / "best.weights.h5")) as tmp:
        assert atomic.temp_target(os.path.basename(tmp)) == "best.weights.h5"
    assert atomic.temp_target("notes.txt") is None
    for name in ("demo", "demo.v2"):
        (tmp_path / f".{name}.k2j4x_9a.partial").mkdir()
    assert atomic.partial_target(".demo.v2.k2j4x_9a.partial") == "demo.v2"
    assert atomic.partial_target(".config.old") is None
    assert atomic.remove_stale_partials(str(tmp_path), "demo") == [".demo.k2j4x_9a.partial"]
    assert os.path.isdir(tmp_path / ".demo.v2.k2j4x_9a.partial")


def test_a_batch_writer_may_skip_the_syncs(tmp_path, monkeypatch):
    events = _record_syncs(monkeypatch)
    with atomic.replacing(str(tmp_path / "a.jpg"), durable=False) as tmp, open(tmp, "wb") as f:
        f.write(b"jpeg")
    assert [kind for kind, _ in events] == ["rename"]
    assert (tmp_path / "a.jpg").read_bytes() == b"jpeg"
