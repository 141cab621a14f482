"""The `lumina-studio` command: it dispatches to the app, the core commands and the trainer.

It lives apart from core, since core may import nothing of ours above it (ARCHITECTURE.md).
"""
