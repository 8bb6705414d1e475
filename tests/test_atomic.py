import pytest

from salis.artifacts.atomic import atomic_dir, atomic_path, write_json


def test_failed_write_leaves_old_file_and_no_temp(tmp_path):
    target = tmp_path / "out.json"
    write_json(target, {"a": 1})
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("crash mid-write")
    assert target.read_text() == '{\n  "a": 1\n}\n'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.json"]


def test_interrupt_before_first_write_leaves_nothing(tmp_path):
    target = tmp_path / "sub" / "table.parquet"
    with pytest.raises(KeyboardInterrupt):
        with atomic_path(target):
            raise KeyboardInterrupt
    assert not target.exists()
    assert list((tmp_path / "sub").iterdir()) == []


def test_atomic_dir_replaces_whole_folder(tmp_path):
    target = tmp_path / "prepared"
    with atomic_dir(target) as tmp:
        (tmp / "a.txt").write_text("1")
    with atomic_dir(target) as tmp:
        (tmp / "b.txt").write_text("2")
    assert sorted(p.name for p in target.iterdir()) == ["b.txt"]
    with pytest.raises(ValueError):
        with atomic_dir(target) as tmp:
            (tmp / "c.txt").write_text("3")
            raise ValueError
    assert sorted(p.name for p in target.iterdir()) == ["b.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["prepared"]


def test_a_full_disk_is_one_line_naming_the_artifact_and_leaves_nothing(tmp_path):
    import errno

    from salis.artifacts.atomic import atomic_path, ensure_space, is_disk_full
    from salis.errors import SalisError

    target = tmp_path / "table.parquet"
    with pytest.raises(SalisError, match=r"table\.parquet: no space left on device while writing it \(it needs more "
                                         r"than 0\.0 MiB; [0-9.]+ MiB free there\)"):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"x" * 100)
            raise OSError(errno.ENOSPC, "No space left on device")
    assert not target.exists() and list(tmp_path.iterdir()) == []
    # pyarrow and torch re-raise ENOSPC as text without an errno
    assert is_disk_full(OSError("IOError: No space left on device. Detail: [errno 28]"))
    assert not is_disk_full(OSError(errno.EACCES, "Permission denied"))
    with pytest.raises(PermissionError):  # any other error passes through unchanged
        with atomic_path(target):
            raise PermissionError(errno.EACCES, "Permission denied")
    with pytest.raises(SalisError, match=r"model\.pt: no space left on device for it \(it needs [0-9.]+ MiB"):
        ensure_space(tmp_path / "models" / "model.pt", 2**62)
    ensure_space(tmp_path / "models" / "model.pt", 1)


def test_weights_written_under_two_names_are_the_same_bytes_and_load_back(tmp_path):
    import torch

    from salis.artifacts.atomic import torch_bytes, write_torch

    state = {"w": torch.arange(6, dtype=torch.float32).reshape(2, 3), "n": torch.tensor(7)}
    write_torch(tmp_path / "a.pt", state)
    write_torch(tmp_path / "sub" / "b.pt", state)  # torch.save to a file would name its records after it
    assert (tmp_path / "a.pt").read_bytes() == (tmp_path / "sub" / "b.pt").read_bytes() == torch_bytes(state)
    back = torch.load(tmp_path / "a.pt", weights_only=True)
    assert torch.equal(back["w"], state["w"]) and int(back["n"]) == 7
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.pt", "sub"]  # no temp left behind
