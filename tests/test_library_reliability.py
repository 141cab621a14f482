"""The library keeps every image and every favourite through odd files, damage, races and missing files."""

import multiprocessing as mp
import os
import stat
import sys
from pathlib import Path

import pytest

from core.library import FAVOURITES, INDEX, Library

sys.path.insert(0, str(Path(__file__).parent))
from hostile_pngs import hostile_files  # noqa: E402
from test_library import make_png  # noqa: E402


@pytest.fixture
def library(tmp_path):
    lib = Library(tmp_path / "library")
    for i, prompt in enumerate(["a red fox", "a blue square", "a green circle"]):
        lib.add(make_png(lib.folder, f"img{i}", prompt, seed=i))
    yield lib
    lib.close()


def test_seeds_of_the_full_range_are_indexed_exactly(library):
    top = 2**64 - 1
    image_id = library.add(make_png(library.folder, "top", "a blue square", seed=top))
    assert library.get(image_id).seed == top and library.get(image_id).settings["seed"] == top
    indexed, skipped = library.rebuild()
    assert (indexed, skipped) == (4, [])
    assert [e.seed for e in library.search("blue")][0] == top


def test_a_rebuild_skips_each_bad_file_and_keeps_favourites_and_trash(library):
    fox, square = library.search("fox")[0], library.search("square")[0]
    library.set_favourite(fox.id, True)
    library.trash([square.id])
    bad = hostile_files(library.folder)
    make_png(library.folder, "top", "a tall tree", seed=2**64 - 1)
    indexed, skipped = library.rebuild()
    assert indexed == 4
    assert sorted(name for name, _ in skipped) == sorted(p.name for p in bad.values())
    assert all(why for _, why in skipped)
    assert [e.prompt for e in library.search(favourites_only=True)] == ["a red fox"]
    assert [e.prompt for e in library.search(trashed=True)] == ["a blue square"]
    assert library.rebuild()[0] == 4  # and again: no rebuild is left broken by the one before


def test_a_rebuild_that_fails_midway_keeps_the_old_index(library, monkeypatch):
    library.set_favourite(library.search("fox")[0].id, True)
    import core.library as module

    def boom(path, trashed, favourite=False):
        raise KeyboardInterrupt  # anything that is not one bad file: the power going, a bug

    monkeypatch.setattr(module, "_row", boom)
    with pytest.raises(KeyboardInterrupt):
        library.rebuild()
    assert library.count() == 3 and len(library.search(favourites_only=True)) == 1


def test_favourites_survive_losing_the_index(library):
    library.set_favourite(library.search("circle")[0].id, True)
    library.close()
    (library.folder / INDEX).unlink()
    for suffix in ("-wal", "-shm"):
        (library.folder / (INDEX + suffix)).unlink(missing_ok=True)
    fresh = Library(library.folder)
    fresh.rebuild()
    assert [e.prompt for e in fresh.search(favourites_only=True)] == ["a green circle"]
    assert (library.folder / FAVOURITES).exists()
    fresh.close()


def damaged_library(folder: Path, damage: str, images: int = 300, favourite_seed: int = 7) -> bytes:
    """A library of `images` PNGs (one a favourite) whose index then gets 8 KB of garbage over its header or
    its middle; returns the damaged index's bytes."""
    lib = Library(folder)
    for i in range(images):  # enough rows for the index to span many pages
        lib.add(make_png(lib.folder, f"img{i}", f"prompt number {i} " + "words " * 20, seed=i))
    lib.set_favourite(next(e.id for e in lib.search(limit=-1) if e.seed == favourite_seed), True)
    lib.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    lib.close()
    index = folder / INDEX
    blob = bytearray(index.read_bytes())
    at = 0 if damage == "header" else len(blob) // 2
    blob[at:at + 8192] = os.urandom(8192)
    index.write_bytes(bytes(blob))
    return bytes(blob)


@pytest.mark.parametrize("damage", ["middle", "header"])
def test_a_damaged_index_is_moved_aside_and_rebuilt(tmp_path, damage):
    folder = tmp_path / "library"
    blob = damaged_library(folder, damage)
    opened = Library(folder)
    assert opened.recovered is not None and opened.recovered.exists() and opened.needs_rebuild
    assert opened.recovered.read_bytes() == blob  # kept, not deleted
    indexed, skipped = opened.rebuild()
    assert (indexed, skipped) == (300, []) and not opened.needs_rebuild
    assert [e.seed for e in opened.search(favourites_only=True)] == [7]
    opened.close()


def test_trashing_images_whose_file_is_gone(library):
    entries = library.search()
    entries[1].path.unlink()
    outcome = library.trash([e.id for e in entries])
    assert sorted(outcome.moved) == sorted([entries[0].id, entries[2].id])
    assert len(outcome.problems) == 1 and entries[1].path.name in outcome.problems[0]
    assert library.count() == 0 and library.count(trashed=True) == 2  # the missing one left the index
    trashed = library.search(trashed=True)
    trashed[0].path.unlink()
    back = library.restore(outcome.moved)
    assert back.moved == [e.id for e in trashed[1:]] and len(back.problems) == 1
    assert library.count() == 1 and library.search()[0].path.exists()


def _add_many(folder: str, start: int, barrier) -> None:
    lib = Library(folder)
    paths = sorted(Path(folder).glob("race*.png"))
    barrier.wait()
    for path in paths:
        lib.add(path)
    lib.close()


def test_two_processes_adding_the_same_files(tmp_path):
    lib = Library(tmp_path / "library")
    for i in range(40):
        make_png(lib.folder, f"race{i:02d}", f"prompt {i}", seed=i)
    context = mp.get_context("spawn")
    barrier = context.Barrier(2)
    workers = [context.Process(target=_add_many, args=(str(lib.folder), n, barrier)) for n in range(2)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(60)
    assert [w.exitcode for w in workers] == [0, 0]
    assert lib.count() == 40
    lib.close()


def test_written_files_follow_the_umask_and_failed_exports_leave_nothing(library, tmp_path, monkeypatch):
    old = os.umask(0o022)
    try:
        png = make_png(library.folder, "mode", "a cat", seed=1)
        assert stat.S_IMODE(png.stat().st_mode) == 0o644
        ids = [e.id for e in library.search()]
        folder = library.export(ids, tmp_path / "out")
        assert {stat.S_IMODE(p.stat().st_mode) for p in folder.iterdir()} == {0o644}
        archive = library.export(ids, tmp_path / "out.zip")
        assert stat.S_IMODE(archive.stat().st_mode) == 0o644
    finally:
        os.umask(old)
    import errno

    import core.library as module

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(module, "_exported_png", full)
    from core.errors import LuminaError

    with pytest.raises(LuminaError, match="disk is full"):
        library.export(ids, tmp_path / "again.zip")
    assert sorted(p.name for p in tmp_path.iterdir() if "again" in p.name) == []


def test_an_index_of_the_previous_layout_is_rebuilt_with_its_favourites(tmp_path):
    import sqlite3

    folder = tmp_path / "library"
    folder.mkdir()
    names = [make_png(folder, f"old{i}", f"an old picture {i}", seed=i).name for i in range(3)]
    db = sqlite3.connect(str(folder / INDEX))  # version 1: seeds as SQLite integers, no user_version
    db.executescript("CREATE TABLE images (id INTEGER PRIMARY KEY, name TEXT UNIQUE NOT NULL, prompt TEXT NOT NULL "
                     "DEFAULT '', negative_prompt TEXT NOT NULL DEFAULT '', model TEXT NOT NULL DEFAULT '', seed "
                     "INTEGER, width INTEGER, height INTEGER, created REAL NOT NULL, favourite INTEGER NOT NULL "
                     "DEFAULT 0, trashed REAL, settings TEXT NOT NULL DEFAULT '{}');")
    db.executemany("INSERT INTO images (name, seed, created, favourite) VALUES (?, ?, 0, ?)",
                   [(name, i, int(i == 1)) for i, name in enumerate(names)])
    db.commit()
    db.close()
    lib = Library(folder)
    assert lib.needs_rebuild and lib.recovered is None
    assert lib.rebuild() == (3, [])
    assert [e.seed for e in lib.search(favourites_only=True)] == [1]
    lib.close()
    assert not Library(folder).needs_rebuild


def test_an_export_goes_to_a_new_or_empty_folder_names_a_vanished_file_and_can_be_cancelled(library, tmp_path):
    from core.errors import LuminaError

    ids = [e.id for e in library.search()]
    for target, message in ((library.folder / "out", "inside the folder being exported"),
                            (library.folder, "inside the folder being exported")):
        with pytest.raises(LuminaError, match=message):
            library.export(ids, target)
    used = tmp_path / "used"
    used.mkdir()
    (used / "img0.png").write_bytes(b"mine")
    with pytest.raises(LuminaError, match="not empty"):
        library.export(ids, used)
    assert (used / "img0.png").read_bytes() == b"mine"
    (tmp_path / "old.zip").write_bytes(b"mine")
    with pytest.raises(LuminaError, match="exists already"):
        library.export(ids, tmp_path / "old.zip")
    assert library.export(ids, tmp_path / "old.zip", replace=True).stat().st_size > 100

    steps = library.export_steps(ids, tmp_path / "cancelled")
    assert next(steps) == (1, 3)
    steps.close()  # what Cancel does
    library.search()[1].path.unlink()  # deleted behind the app's back
    with pytest.raises(LuminaError, match="vanished during the export"):
        library.export(ids, tmp_path / "gone")
    leftovers = sorted(p.name for p in tmp_path.iterdir() if p.name not in ("library", "used", "old.zip"))
    assert leftovers == []
