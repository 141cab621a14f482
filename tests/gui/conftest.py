"""GUI tests never block on a dialog: offscreen, nobody can answer one, and a modal loop swallows timeouts."""

import pytest
from PySide6.QtWidgets import QFileDialog, QMessageBox


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
