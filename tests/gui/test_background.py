"""BackgroundTask: the newest run alone reaches its callbacks; a stopped one is told to stop and is dropped."""

import threading

from PySide6.QtCore import QCoreApplication, QThreadPool


def test_a_new_run_replaces_the_one_before_and_a_stopped_run_is_dropped(qtbot):
    from app.background import BackgroundTask

    task, results, errors, stops = BackgroundTask(), [], [], []
    gate = threading.Event()

    def slow(label):
        def work(should_stop):
            gate.wait(10)
            stops.append((label, should_stop()))
            return label
        return work

    task.start(slow("first"), results.append, errors.append)
    assert task.running
    task.start(slow("second"), results.append, errors.append)  # replaces the first: its token turns true
    gate.set()
    qtbot.waitUntil(lambda: results == ["second"] and not task.running, timeout=10_000)
    qtbot.waitUntil(lambda: len(stops) == 2, timeout=10_000)
    assert dict(stops) == {"first": True, "second": False} and not errors

    gate.clear()
    task.start(slow("third"), results.append, errors.append)
    task.stop()
    gate.set()
    QThreadPool.globalInstance().waitForDone(10_000)
    QCoreApplication.processEvents()  # what the stopped run sent back is delivered now: and dropped
    assert len(stops) == 3 and dict(stops)["third"] is True  # it was told to stop
    assert results == ["second"] and not errors and not task.running

    def failing(should_stop):
        raise OSError("the disk went away")

    task.start(failing, results.append, errors.append)
    qtbot.waitUntil(lambda: bool(errors), timeout=10_000)
    assert str(errors[0]) == "the disk went away" and not task.running
