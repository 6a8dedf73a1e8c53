"""Atomic writes keep the old file on failure and use the usual permissions; loads never run code."""

import errno
import os
import stat
from pathlib import Path

import pytest
import torch

from sftcore._fileio import storage
from sftcore.errors import ConfigError


def test_written_files_get_the_umask_mode_not_owner_only(tmp_path):
    old = os.umask(0o022)
    try:
        storage.write_text(tmp_path / "a.txt", "x")
        storage.save({"w": torch.ones(2)}, tmp_path / "b.pt")
    finally:
        os.umask(old)
    for name in ("a.txt", "b.pt"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == storage._MODE


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path, monkeypatch):
    target = tmp_path / "c.pt"
    storage.save({"w": torch.zeros(3)}, target)

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(storage.os, "fsync", full)
    with pytest.raises(ConfigError, match="disk is full.*unchanged"):
        storage.save({"w": torch.ones(3)}, target)
    monkeypatch.undo()
    assert torch.equal(torch.load(target, weights_only=True)["w"], torch.zeros(3))
    assert os.listdir(tmp_path) == ["c.pt"]


def test_partial_writes_are_removed(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / ".x.pt.abc.tmp").write_bytes(b"half")
    (tmp_path / "keep.tmp").write_bytes(b"not ours")
    storage.remove_partial_writes(tmp_path)
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["keep.tmp", "sub"]


@pytest.mark.parametrize("content, needle", [(b"", "truncated or corrupt"), (b"\x80\x02}q\x00.", "truncated or corrupt")])
def test_unreadable_files(tmp_path, content, needle):
    path = tmp_path / "bad.pt"
    path.write_bytes(content)
    with pytest.raises(ConfigError, match=needle) as info:
        storage.load(path, "checkpoint", "delete it")
    assert "\n" not in str(info.value) and str(info.value).endswith("; delete it")


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="checkpoint '.*nope.pt' not found; fix it"):
        storage.load(tmp_path / "nope.pt", "checkpoint", "fix it")


@pytest.mark.parametrize("exc", [IndexError("pop from empty list"), KeyError(3), TypeError("bad"), AttributeError("x")])
def test_random_bytes_that_derail_the_unpickler_are_one_line(tmp_path, monkeypatch, exc):
    """Random bytes sometimes make torch's unpickler fail with an IndexError and the like (seen with
    os.urandom(4096)): still 'truncated or corrupt', never an internal error."""
    import torch

    path = tmp_path / "x.pt"
    path.write_bytes(b"junk")

    def fail(*args, **kwargs):
        raise exc

    monkeypatch.setattr(torch, "load", fail)
    with pytest.raises(storage.StorageError, match="truncated or corrupt"):
        storage.load(path, "checkpoint", "delete it")


# --------------------------------------------------------------------------- output_file: one check for every --out
def test_output_file_refuses_what_a_rename_would_replace(tmp_path):
    from sftcore._fileio.storage import output_file
    from sftcore.errors import SftError

    target = tmp_path / "kept.txt"
    target.write_text("mine")
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    link = tmp_path / "link"
    link.symlink_to(target)
    cases = {fifo: "not a regular file", link: "symbolic link", tmp_path: "is a folder",
             Path("/dev/null"): "not a regular file", target: "already exists; pass --force",
             tmp_path / "no" / "x.txt": "not found; create it first"}
    for path, expect in cases.items():
        with pytest.raises(SftError, match=expect) as err:
            output_file(path, force=path is not target)
        assert "\n" not in str(err.value)
    assert output_file(target, force=True) == target and target.read_text() == "mine"  # checked, not touched
    assert output_file(tmp_path / "new.txt", force=False) == tmp_path / "new.txt"
    assert output_file(tmp_path / "a" / "b.txt", force=False, make_folder=True) == tmp_path / "a" / "b.txt"
    assert fifo.exists() and link.is_symlink()
