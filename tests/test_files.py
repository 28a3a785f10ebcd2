import os
import stat

import pytest

from imgclf.files import staged_directory, write_json_atomic, write_text_atomic


def umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_text_written_with_umask_permissions(tmp_path):
    path = tmp_path / "out" / "a.txt"

    write_text_atomic(path, "hello\n")

    assert path.read_text() == "hello\n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask()


def test_json_replaces_existing_file(tmp_path):
    path = tmp_path / "metrics.json"
    path.write_text("old")

    write_json_atomic(path, {"accuracy": 0.5})

    assert path.read_text() == '{\n  "accuracy": 0.5\n}\n'
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


def test_staged_directory_replaces_whole_folder(tmp_path):
    final = tmp_path / "prepared"
    (final / "old").mkdir(parents=True)

    with staged_directory(final) as staging:
        (staging / "new.txt").write_text("new")

    assert sorted(p.name for p in final.iterdir()) == ["new.txt"]
    assert stat.S_IMODE(final.stat().st_mode) == 0o777 & ~umask()
    assert [p.name for p in tmp_path.iterdir()] == ["prepared"]


def test_staged_directory_error_keeps_old(tmp_path):
    final = tmp_path / "prepared"
    final.mkdir()
    (final / "old.txt").write_text("old")

    with pytest.raises(RuntimeError):
        with staged_directory(final) as staging:
            (staging / "half.txt").write_text("half")
            raise RuntimeError("stage failed")

    assert sorted(p.name for p in final.iterdir()) == ["old.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["prepared"]


def test_stale_partial_files_removed(tmp_path):
    stale = tmp_path / ".a.txt.x1y2.partial"
    stale.write_text("left by a killed run")

    write_text_atomic(tmp_path / "a.txt", "fresh")

    assert not stale.exists()
