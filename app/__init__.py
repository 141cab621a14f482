"""PySide6 user interface (arrives with the app issue). Never imports torch."""
