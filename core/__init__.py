"""Lumina Studio core: everything that is not drawing (no Qt here)."""

__version__ = "0.1.0"
