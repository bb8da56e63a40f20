"""Files are replaced whole: a link or copy made of one keeps its content when it is replaced."""

from __future__ import annotations

import os

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
