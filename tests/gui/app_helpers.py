"""Helpers for the GUI tests that drive a real window (the fixtures are in conftest.py)."""

SMALL = {"width": 64, "height": 48, "steps": 3, "seed_mode": "fixed", "seed": 1, "backend": "torch", "count": 1}


def generate(window, qtbot, prompt, **values):
    window.generate.apply_values({**SMALL, **values, "prompt": prompt})
    window.generate.request_generation()


def wait_idle(window, qtbot, timeout=120_000):
    qtbot.waitUntil(lambda: not window.client.busy, timeout=timeout)
