"""The launcher's exit codes (`python -m sweep.launch`, `python -m sweep.calibrate`, `python -m sweep.report`)."""

EXIT_FAILED_CELLS = 1  # the sweep ended, but some cell had every trial fail (the error.txt paths say why)
EXIT_BAD_INPUT = 2  # a config, data, weights or storage problem found before anything was created
EXIT_STORAGE = 3  # the storage went away mid-sweep: resumable once it is back
EXIT_INTERRUPTED = 130  # Ctrl-C or a preemption of the driver: resumable
