import os
import shutil
import tarfile
import zipfile
from pathlib import Path

import pytest

from conftest import write_class_images
from imgclf.fetch import FetchError, fetch


def files_under(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


def test_class_folders_copied(image_folder, tmp_path):
    counts = fetch(str(image_folder), tmp_path / "raw")

    assert counts == {"cats": 20, "dogs": 20}
    assert files_under(tmp_path / "raw") == files_under(image_folder)


def test_split_folders_merged_per_class(tmp_path):
    source = tmp_path / "source"
    write_class_images(source / "wrapper" / "train", {"cats": 4, "dogs": 4})
    write_class_images(source / "wrapper" / "validation", {"cats": 2, "dogs": 2}, seed=1)
    (source / "wrapper" / "vectorize.py").write_text("print('not an image')\n")

    counts = fetch(str(source), tmp_path / "raw")

    assert counts == {"cats": 6, "dogs": 6}
    names = files_under(tmp_path / "raw")
    # Both splits use the same file names, so the second split's copies get its name as prefix.
    assert "cats/cats_000.jpg" in names
    assert "cats/validation__cats_000.jpg" in names
    assert not any("vectorize" in name for name in names)


@pytest.mark.parametrize("kind", ["zip", "tar.gz"])
def test_archive_extracted_and_merged(tmp_path, kind):
    tree = tmp_path / "tree"
    write_class_images(tree / "pets" / "train", {"cats": 3, "dogs": 3})
    write_class_images(tree / "pets" / "test", {"cats": 1, "dogs": 1}, seed=2)
    (tree / "__MACOSX").mkdir()
    (tree / "__MACOSX" / "junk").write_text("resource fork")

    archive = tmp_path / f"pets.{kind}"
    if kind == "zip":
        with zipfile.ZipFile(archive, "w") as bundle:
            for path in tree.rglob("*"):
                bundle.write(path, path.relative_to(tree))
    else:
        with tarfile.open(archive, "w:gz") as bundle:
            bundle.add(tree / "pets", arcname="pets")
            bundle.add(tree / "__MACOSX", arcname="__MACOSX")

    counts = fetch(str(archive), tmp_path / "raw")

    assert counts == {"cats": 4, "dogs": 4}
    assert sorted(os.listdir(tmp_path / "raw")) == ["cats", "dogs"]


def test_refetch_replaces_old_files(image_folder, tmp_path):
    dest = tmp_path / "raw"
    fetch(str(image_folder), dest)
    (image_folder / "cats" / "cats_000.jpg").unlink()

    counts = fetch(str(image_folder), dest)

    assert counts["cats"] == 19
    assert not (dest / "cats" / "cats_000.jpg").exists()


def test_source_never_modified(image_folder, tmp_path):
    before = {p: p.read_bytes() for p in image_folder.rglob("*") if p.is_file()}
    fetch(str(image_folder), tmp_path / "raw")
    after = {p: p.read_bytes() for p in image_folder.rglob("*") if p.is_file()}
    assert before == after


def test_symlink_outside_source_skipped(image_folder, tmp_path):
    secret = tmp_path / "secret.jpg"
    shutil.copy(image_folder / "cats" / "cats_000.jpg", secret)
    (image_folder / "cats" / "link.jpg").symlink_to(secret)

    fetch(str(image_folder), tmp_path / "raw")

    assert not (tmp_path / "raw" / "cats" / "link.jpg").exists()


def test_single_class_rejected(tmp_path):
    write_class_images(tmp_path / "source", {"cats": 3})
    with pytest.raises(FetchError, match="at least 2 classes"):
        fetch(str(tmp_path / "source"), tmp_path / "raw")


def test_mixed_split_and_class_folders_rejected(tmp_path):
    write_class_images(tmp_path / "source" / "train", {"cats": 2, "dogs": 2})
    write_class_images(tmp_path / "source", {"birds": 2})
    with pytest.raises(FetchError, match="mixes split folders"):
        fetch(str(tmp_path / "source"), tmp_path / "raw")


def test_missing_source_rejected(tmp_path):
    with pytest.raises(FetchError, match="neither an http"):
        fetch(str(tmp_path / "nowhere"), tmp_path / "raw")


def test_plain_file_source_rejected(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("hello")
    with pytest.raises(FetchError, match="not a .zip or .tar archive"):
        fetch(str(path), tmp_path / "raw")


def test_damaged_archive_rejected(tmp_path):
    path = tmp_path / "broken.zip"
    path.write_bytes(b"PK\x03\x04 this is not really a zip")
    with pytest.raises(FetchError, match="damaged or not an archive"):
        fetch(str(path), tmp_path / "raw")


def test_failure_keeps_previous_output(image_folder, tmp_path):
    dest = tmp_path / "raw"
    fetch(str(image_folder), dest)
    # One class only: merge_classes fails while the new copy is being staged.
    write_class_images(tmp_path / "one-class", {"cats": 3})

    with pytest.raises(FetchError, match="at least 2 classes"):
        fetch(str(tmp_path / "one-class"), dest)

    assert len(files_under(dest)) == 40
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".partial")]


def test_dangling_symlink_skipped(image_folder, tmp_path):
    (image_folder / "cats" / "gone.jpg").symlink_to(tmp_path / "missing.jpg")

    counts = fetch(str(image_folder), tmp_path / "raw")

    assert counts["cats"] == 20
    assert not (tmp_path / "raw" / "cats" / "gone.jpg").exists()


def test_symlinked_class_folder_skipped(tmp_path):
    source = write_class_images(tmp_path / "source", {"cats": 2, "dogs": 2})
    elsewhere = write_class_images(tmp_path / "elsewhere", {"birds": 2})
    (source / "birds").symlink_to(elsewhere / "birds")

    counts = fetch(str(source), tmp_path / "raw")

    assert set(counts) == {"cats", "dogs"}


def test_case_variant_classes_rejected(tmp_path):
    write_class_images(tmp_path / "source" / "train", {"cats": 2, "dogs": 2})
    write_class_images(tmp_path / "source" / "test", {"cats": 1, "dogs": 1})
    (tmp_path / "source" / "test" / "dogs").rename(tmp_path / "source" / "test" / "Dogs")

    with pytest.raises(FetchError, match="'Dogs' and 'dogs' differ only in letter case"):
        fetch(str(tmp_path / "source"), tmp_path / "raw")


def test_empty_class_folder_named(tmp_path):
    write_class_images(tmp_path / "source", {"cats": 2})
    (tmp_path / "source" / "dogs").mkdir()

    with pytest.raises(FetchError, match=r"found: cats \(empty folders skipped: dogs\)"):
        fetch(str(tmp_path / "source"), tmp_path / "raw")


def test_empty_class_folder_skipped(tmp_path):
    write_class_images(tmp_path / "source", {"cats": 2, "dogs": 2})
    (tmp_path / "source" / "birds").mkdir()

    counts = fetch(str(tmp_path / "source"), tmp_path / "raw")

    assert set(counts) == {"cats", "dogs"}
    assert not (tmp_path / "raw" / "birds").exists()


def test_stale_partial_folder_removed(image_folder, tmp_path):
    stale = tmp_path / ".raw.abc123.partial"
    stale.mkdir()
    (stale / "half.jpg").write_bytes(b"half")

    fetch(str(image_folder), tmp_path / "raw")

    assert not stale.exists()


def test_corrupt_compressed_zip_rejected(image_folder, tmp_path):
    archive = tmp_path / "pets.zip"
    with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_DEFLATED) as bundle:
        for path in sorted(image_folder.rglob("*.jpg")):
            bundle.write(path, path.relative_to(image_folder))
    data = bytearray(archive.read_bytes())
    # Overwrite the middle of the first member's compressed data, past its header.
    for offset in range(200, 400):
        data[offset] ^= 0xFF
    archive.write_bytes(bytes(data))

    with pytest.raises(FetchError, match="damaged or not an archive"):
        fetch(str(archive), tmp_path / "raw")


def test_unicode_variant_classes_rejected(tmp_path):
    composed, decomposed = "\u00f1and\u00fa", "n\u0303andu\u0301"  # "ñandú" twice
    write_class_images(tmp_path / "source" / "train", {composed: 2, "dogs": 2})
    write_class_images(tmp_path / "source" / "test", {decomposed: 1, "dogs": 1})

    with pytest.raises(FetchError, match="Unicode normalization"):
        fetch(str(tmp_path / "source"), tmp_path / "raw")


def test_pipe_in_class_folder_skipped(image_folder, tmp_path):
    os.mkfifo(image_folder / "cats" / "pipe.jpg")

    counts = fetch(str(image_folder), tmp_path / "raw")

    assert counts["cats"] == 20
    assert not (tmp_path / "raw" / "cats" / "pipe.jpg").exists()


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their permissions")
def test_unreadable_file_skipped(image_folder, tmp_path):
    locked = image_folder / "cats" / "locked.jpg"
    shutil.copy(image_folder / "cats" / "cats_000.jpg", locked)
    locked.chmod(0)

    counts = fetch(str(image_folder), tmp_path / "raw")

    assert counts["cats"] == 20
    assert not (tmp_path / "raw" / "cats" / "locked.jpg").exists()
