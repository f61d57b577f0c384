"""leanmed.atomic: one mechanism for every atomic write of the project."""

import os

import pytest

from leanmed.atomic import atomic_path, write_bytes_atomically, write_text_atomically


def test_the_file_appears_complete_under_its_name_and_no_temporary_is_left(tmp_path):
    target = tmp_path / "sub" / "out.csv"
    write_text_atomically(target, "a,b\n1,2\n")
    assert target.read_text() == "a,b\n1,2\n"
    write_bytes_atomically(target, b"replaced")
    assert target.read_bytes() == b"replaced"
    assert [p.name for p in target.parent.iterdir()] == ["out.csv"]


def test_a_failed_write_keeps_the_old_file_and_removes_the_temporary(tmp_path):
    target = tmp_path / "out.bin"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError), atomic_path(target) as temporary:
        temporary.write_bytes(b"half")
        raise RuntimeError("killed mid-write")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.bin"]


def test_the_file_gets_the_usual_permissions_not_private_ones(tmp_path):
    """mkstemp would create 0600 files, unreadable by the rest of a cluster group; the umask decides here."""
    umask = os.umask(0o022)
    try:
        write_text_atomically(tmp_path / "shared.csv", "x\n")
    finally:
        os.umask(umask)
    assert (tmp_path / "shared.csv").stat().st_mode & 0o777 == 0o644


def test_a_write_the_disk_refuses_names_the_file_and_the_reason(tmp_path):
    """torch.save on a full disk raises a RuntimeError ("unexpected pos 2880 vs 2774") from the OSError: the file and
    "No space left on device" appeared only in the chained traceback."""
    import errno

    import pytest

    from leanmed.atomic import atomic_path

    target = tmp_path / "runs" / "best.pt"
    with pytest.raises(OSError) as raised:
        with atomic_path(target) as temporary:
            temporary.write_bytes(b"partial")
            try:
                raise OSError(errno.ENOSPC, "No space left on device")
            except OSError:
                raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 2880 vs 2774")
    assert raised.value.errno == errno.ENOSPC and raised.value.filename == str(target)
    assert "No space left on device" in str(raised.value) and str(target) in str(raised.value)
    assert list(target.parent.iterdir()) == []  # no temporary file left
    with pytest.raises(ValueError):  # no storage error behind it: raised as it is
        with atomic_path(target):
            raise ValueError("not a storage error")
