"""Every setting the app keeps between runs, with its type and default: the one place that names their keys.

They live in settings.ini in the data folder (QSettings' ini format, the keys earlier versions wrote). That
format gives values back as it stored them: a one-item list as a plain string, a boolean as "true", a number
as text. Each setting is read through its type here, so the panels get a list, a bool or a dict, never a guess.
"""

from __future__ import annotations

import json

from PySide6.QtCore import QByteArray, QSettings

from core.storage import data_dir


class _Setting:
    def __init__(self, key: str, default=None):
        self.key, self.default = key, default

    def __get__(self, settings: AppSettings, owner=None):
        if settings is None:
            return self
        value = settings.store.value(self.key)
        if value is None:
            return self.default() if callable(self.default) else self.default
        try:
            return self.read(value)
        except (TypeError, ValueError):  # a hand-edited or damaged file: the default, not a crash at start-up
            return self.default() if callable(self.default) else self.default

    def __set__(self, settings: AppSettings, value) -> None:
        if value is None:
            settings.store.remove(self.key)
        else:
            settings.store.setValue(self.key, self.write(value))

    def read(self, value):
        return value

    def write(self, value):
        return value


class _Text(_Setting):
    def read(self, value) -> str:
        if not isinstance(value, str):
            raise TypeError(value)
        return value


class _Flag(_Setting):
    def read(self, value) -> bool:
        return value is True or str(value).lower() == "true"

    def write(self, value: bool) -> str:
        return "true" if value else "false"


class _Number(_Setting):
    def read(self, value) -> int:
        return int(value)


class _Names(_Setting):
    """A list of strings (folders, hosts); `joined` ones are stored as one comma-separated string."""

    def __init__(self, key: str, default=list, joined: bool = False):
        super().__init__(key, default)
        self.joined = joined

    def read(self, value) -> list[str]:
        items = value.split(",") if self.joined and isinstance(value, str) else value
        items = [items] if isinstance(items, str) else list(items)
        return [str(item) for item in items if item]

    def write(self, value: list[str]):
        return ",".join(value) if self.joined else list(value)


class _Json(_Setting):
    def read(self, value) -> dict:
        parsed = json.loads(value)
        if not isinstance(parsed, dict):
            raise ValueError(value)
        return parsed

    def write(self, value: dict) -> str:
        return json.dumps(value)


class _State(_Setting):
    """A widget's saved state (geometry, a splitter's sizes): Qt's own bytes."""

    def read(self, value) -> QByteArray:
        if not isinstance(value, QByteArray):
            raise TypeError(value)
        return value


class AppSettings:
    theme = _Text("theme", "system")
    tab = _Number("tab", 0)
    geometry = _State("geometry")
    generate_split = _State("generate_split")
    gallery_split = _State("gallery_split")
    caption_split = _State("caption_split")
    # Generate
    model = _Text("model")  # the registered model last used
    size_for_model = _Text("size_for_model")  # the model whose own size and sampling the form was last set to
    form = _Json("form", dict)  # the Generate form's values
    store_model_path = _Flag("store_model_path", False)
    # Caption
    captioner = _Text("captioner")  # None: the demo captioner; a model folder; or "server"
    captioners = _Names("captioners")  # model folders added, newest first
    caption_server = _Text("caption_server", "http://127.0.0.1:8000/v1")
    caption_api_key = _Text("caption_api_key", "")
    caption_remote_hosts = _Names("caption_remote_hosts")  # servers on other computers the person allowed
    caption_styles = _Names("caption_styles", lambda: ["detailed"], joined=True)
    caption_recent = _Names("caption_recent")  # folders, newest first

    def __init__(self, store: QSettings | None = None):
        self.store = store or QSettings(str(data_dir() / "settings.ini"), QSettings.IniFormat)

    def sync(self) -> None:
        self.store.sync()
