"""The one atomic-write helper: all or nothing, no temporary file left, ordinary permissions."""

import os
import stat

import pytest

from deconvjax._atomic import atomic_write, atomic_write_bytes


def test_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "out.fits"
    atomic_write_bytes(target, b"old")

    def broken(tmp):
        with open(tmp, "wb") as f:
            f.write(b"half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        atomic_write(target, broken)
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.fits"]


def test_new_file_gets_the_permissions_of_a_plain_open(tmp_path):
    mask = os.umask(0o022)
    try:
        path = atomic_write_bytes(tmp_path / "sub" / "a.bin", b"x")
    finally:
        os.umask(mask)
    assert path.read_bytes() == b"x"
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
