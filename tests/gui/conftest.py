"""GUI tests never block on a dialog: offscreen, nobody can answer one, and a modal loop swallows timeouts."""


import pytest
from PySide6.QtWidgets import QFileDialog, QMessageBox

from core.models.registry import add_model

from app_helpers import SMALL
from scripted_engine import SERVICE as SCRIPTED


@pytest.fixture(autouse=True)
def dialogs_fail_instead_of_blocking(monkeypatch):
    """A dialog a test did not expect (and patch itself) fails that test at once."""

    def unexpected(name):
        def fail(*args, **kwargs):
            texts = [a for a in args if isinstance(a, str)]
            raise AssertionError(f"unexpected modal dialog {name}: {texts}")
        return fail

    for name in ("question", "information", "warning", "critical", "about"):
        monkeypatch.setattr(QMessageBox, name, unexpected(f"QMessageBox.{name}"))
    for name in ("getExistingDirectory", "getOpenFileName", "getSaveFileName"):
        monkeypatch.setattr(QFileDialog, name, unexpected(f"QFileDialog.{name}"))


@pytest.fixture
def home(tiny_model, data_home):
    from app.settings import AppSettings

    add_model(tiny_model, name="tiny")
    AppSettings().form = SMALL
    return data_home


def open_window(qtbot, service=None):
    from app.main_window import MainWindow

    win = MainWindow(device="cpu", **({"generation_service": service} if service else {}))
    # pytest-qt closes its widgets before fixtures end: stop the engine first, or a job still finishing would
    # make closing ask "A generation is running..." (a test may end between a job's last image and its "done").
    qtbot.addWidget(win, before_close_func=lambda w: (w.client.stop(), w.caption.client.stop()))
    win.show()
    qtbot.waitUntil(lambda: bool(win.client.info), timeout=120_000)
    return win


@pytest.fixture
def window(qtbot, home):
    """The app over the scripted engine (scripted_engine.py): the real worker process and queue, no model."""
    return open_window(qtbot, SCRIPTED)


@pytest.fixture
def real_window(qtbot, home):
    """The app over the real engine and the tiny model: for the end-to-end tests of Generate's main path."""
    return open_window(qtbot)


@pytest.fixture(autouse=True)
def plain_dialogs_fail_instead_of_blocking(monkeypatch):
    """The same for the app's own plain-text message boxes (app.plain_text)."""
    from app import plain_text

    def unexpected(name):
        def fail(*args, **kwargs):
            raise AssertionError(f"unexpected modal dialog plain_text.{name}: {[a for a in args if isinstance(a, str)]}")
        return fail

    for name in ("ask", "message"):
        monkeypatch.setattr(plain_text, name, unexpected(name))
