"""The app's settings: each read through its type, whatever settings.ini holds."""

from PySide6.QtCore import QByteArray, QSettings

from app.settings import AppSettings


def test_settings_come_back_typed_after_a_restart(data_home):
    settings = AppSettings()
    settings.caption_recent = ["/only/one"]  # QSettings gives a one-item list back as a plain string
    settings.caption_styles = ["detailed", "tags"]
    settings.store_model_path = True
    settings.form = {"prompt": "a fox", "seed": 2**64 - 1}
    settings.tab = 3
    settings.geometry = QByteArray(b"\x01\x02")
    settings.captioner = None  # the demo captioner
    settings.sync()
    again = AppSettings()
    assert again.caption_recent == ["/only/one"] and again.caption_styles == ["detailed", "tags"]
    assert again.store_model_path is True and again.form == {"prompt": "a fox", "seed": 2**64 - 1}
    assert again.tab == 3 and bytes(again.geometry) == b"\x01\x02" and again.captioner is None
    assert again.theme == "system" and again.captioners == [] and again.caption_server.startswith("http://127.0.0.1")


def test_a_damaged_or_hand_edited_file_gives_the_defaults(data_home):
    data_home.mkdir(parents=True, exist_ok=True)
    (data_home / "settings.ini").write_text(
        "[General]\ntab=three\nform={not json\nstore_model_path=maybe\ngeometry=text\ncaption_styles=\n")
    settings = AppSettings()
    assert settings.tab == 0 and settings.form == {} and settings.store_model_path is False
    assert settings.geometry is None and settings.caption_styles == []


def test_the_keys_earlier_versions_wrote_are_read(data_home):
    store = QSettings(str(data_home / "settings.ini"), QSettings.IniFormat)
    store.setValue("caption_styles", "short,tags")
    store.setValue("store_model_path", "true")
    store.setValue("form", '{"steps": 9}')
    store.setValue("caption_remote_hosts", "gpu-box")
    store.sync()
    settings = AppSettings()
    assert settings.caption_styles == ["short", "tags"] and settings.store_model_path
    assert settings.form == {"steps": 9} and settings.caption_remote_hosts == ["gpu-box"]
