"""Stop a sweep cleanly when its storage goes away.

A background thread probes the storage every few seconds (never inside Tune's loop). Two failures in a row count
as gone: the thread interrupts the driver the way Ctrl-C does, so Tune stops the trials and returns; the launcher
then reports the lost storage. Results up to then are safe; `--resume` continues once the storage is back.
"""

from __future__ import annotations

import signal
import threading

from sweep.store.storage import Storage


class StorageWatch:
    def __init__(self, storage: Storage, every: float = 5.0) -> None:
        self.storage, self.every = storage, every
        self.error: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="storage-watch", daemon=True)

    def __enter__(self) -> StorageWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()

    def _run(self) -> None:
        failures = 0
        while not self._stop.wait(self.every):
            try:
                self.storage.probe()
                failures = 0
            except Exception as e:  # any failure to answer counts
                failures += 1
                if failures >= 2:
                    self.error = f"{type(e).__name__}: {e}"
                    signal.raise_signal(signal.SIGINT)  # Tune's own graceful stop
                    return
