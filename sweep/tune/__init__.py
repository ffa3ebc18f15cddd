"""Running: the planned cells as one Ray Tune experiment (run.py): the searcher that hands out trials (searcher.py),
the per-cell schedulers (scheduler.py) and the state they share (state.py), the driver's callbacks (callbacks.py),
and the storage watch (storage_watch.py)."""
