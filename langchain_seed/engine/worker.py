"""`Worker`: one background thread that serves queued work until it is closed.

The scheduler and the serial runner are workers: `submit` queues under `_lock` and starts
the thread (`_start_thread`); `close` lets it finish what is queued and stop; `join` waits.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod


class Worker(ABC):
    """A queue's thread: started on demand, stopped by `close`, waited for by `join`."""

    thread_name = "langchain-seed-worker"

    def __init__(self) -> None:
        self._lock = threading.Condition()
        self._thread: threading.Thread | None = None
        self._closed = False

    def _start_thread(self) -> None:
        """Start the thread unless it runs (call holding `_lock`)."""
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._serve, name=self.thread_name, daemon=True)
            self._thread.start()

    def _check_open(self) -> None:
        """Refuse new work once closed (call holding `_lock`)."""
        if self._closed:
            raise RuntimeError("the engine is closed")

    def close(self) -> None:
        """Accept no more work; the thread stops once the queued work is done."""
        with self._lock:
            self._closed = True
            self._lock.notify_all()

    def join(self) -> None:
        """Wait for the thread to stop (after `close`); a no-op from the thread itself."""
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join()

    @abstractmethod
    def _serve(self) -> None:
        """The thread's loop: serve queued work until closed and drained (each worker's own)."""
