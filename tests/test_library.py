"""The library index: search, favourites, trash with undo, rebuild from files, export."""

import hashlib
import json
import zipfile

import pytest
from PIL import Image

from core import metadata
from core.library import Library, fts_query, safe_name
from core.generation.request import GenerationRequest


def make_png(folder, stem, prompt, seed, model="tiny", negative="", model_hash=None):
    settings = {**GenerationRequest(prompt, negative_prompt=negative).with_defaults().to_dict(), "seed": seed}
    model_hash = model_hash or hashlib.sha256(model.encode()).hexdigest()  # by default each name its own weights
    record = {"format": metadata.FORMAT, "settings": settings, "model": {"name": model, "hash": model_hash}}
    info = metadata.png_info(metadata.a1111_parameters(settings, record["model"]), record)
    return metadata.write_png(Image.new("RGB", (32, 16), "blue"), folder, stem, info)


@pytest.fixture
def library(tmp_path):
    lib = Library(tmp_path / "library")
    prompts = ["a red fox in the snow", "a lighthouse at sunset", "Straße in München bei Nacht", "a red barn"]
    for i, prompt in enumerate(prompts):
        path = make_png(lib.folder, f"img{i}", prompt, seed=i, model="tiny" if i % 2 == 0 else "other")
        lib.add(path)
    yield lib
    lib.close()


def test_search_newest_first_and_filters(library):
    assert [e.seed for e in library.search()] == [3, 2, 1, 0]
    assert [e.prompt for e in library.search("red")] == ["a red barn", "a red fox in the snow"]
    assert [e.seed for e in library.search("light")] == [1]  # prefix match
    assert [e.seed for e in library.search("münchen")] == [2]  # Unicode, case-folded
    assert [e.seed for e in library.search('fox" (snow*')] == [0]  # punctuation cannot break the query
    keys = dict((name, key) for key, name in library.models())
    assert sorted(keys) == ["other", "tiny"]
    assert [e.seed for e in library.search(model=keys["other"])] == [3, 1]
    library.set_favourite(library.search("barn")[0].id, True)
    assert [e.seed for e in library.search(favourites_only=True)] == [3]


def test_trash_restore_and_empty(library):
    fox = library.search("fox")[0]
    library.trash([fox.id])
    assert library.search("fox") == [] and not fox.path.exists()
    assert [e.seed for e in library.search(trashed=True)] == [0]
    library.restore([fox.id])
    assert library.search("fox")[0].path.exists()
    library.trash([fox.id])
    assert library.empty_trash() == 1 and library.count(trashed=True) == 0
    assert not (library.folder / ".trash" / fox.path.name).exists()


def test_rebuild_from_files_keeps_favourites_and_lists_bad_files(library):
    barn = library.search("barn")[0]
    library.set_favourite(barn.id, True)
    library.trash([library.search("fox")[0].id])
    (library.folder / "notes.txt").write_text("not an image")
    (library.folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    indexed, skipped = library.rebuild()
    assert indexed == 4
    assert sorted(name for name, _ in skipped) == ["broken.png", "notes.txt"]
    assert library.count() == 3 and library.count(trashed=True) == 1
    assert [e.prompt for e in library.search(favourites_only=True)] == ["a red barn"]


def test_export_folder_and_zip_with_manifest(library, tmp_path):
    ids = [e.id for e in library.search("red")]
    folder = library.export(ids, tmp_path / "out")
    lines = [json.loads(line) for line in (folder / "metadata.jsonl").read_text().splitlines()]
    assert [line["prompt"] for line in lines] == ["a red barn", "a red fox in the snow"]
    assert metadata.read_settings(folder / lines[0]["file_name"])["prompt"] == "a red barn"
    archive = library.export(ids, tmp_path / "out.zip", strip_metadata=True)
    with zipfile.ZipFile(archive) as z:
        names = z.namelist()
        assert "metadata.jsonl" in names and len(names) == 3
        manifest = [json.loads(line) for line in z.read("metadata.jsonl").decode().splitlines()]
        assert all("prompt" not in line for line in manifest)
        z.extract(manifest[0]["file_name"], tmp_path / "unzipped")
    with Image.open(tmp_path / "unzipped" / manifest[0]["file_name"]) as image:
        assert image.size == (32, 16) and not image.text


def test_names_cannot_escape_the_target():
    assert safe_name("../../etc/passwd") == "passwd"
    assert safe_name("..\\..\\evil.png") == "evil.png"
    assert safe_name("...") == "image.png"
    assert fts_query("") == '""'


def test_unusable_folder_is_a_clear_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    from core.errors import LuminaError

    with pytest.raises(LuminaError, match="cannot be used"):
        Library(blocker / "library")


def test_one_model_under_two_names_is_one_filter_entry(tmp_path):
    lib = Library(tmp_path / "library")
    same = "cd" * 32
    lib.add(make_png(lib.folder, "a", "older", seed=1, model="demo-model", model_hash=same))
    lib.add(make_png(lib.folder, "b", "newer", seed=2, model="demo", model_hash=same))
    lib.add(make_png(lib.folder, "c", "other weights", seed=3, model="demo", model_hash="ef" * 32))
    models = lib.models()
    assert sorted(key for key, _ in models) == sorted([same, "ef" * 32])
    assert [e.prompt for e in lib.search(model=same)] == ["newer", "older"]
    lib.close()
