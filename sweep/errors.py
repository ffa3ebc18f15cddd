"""The errors a launcher answers with exit code 2 (sweep.exit_codes.EXIT_BAD_INPUT): bad input, found before
anything was created. A leaf module, so the spec (sweep.plan.spec.SpecError), the storage and the MLflow store, and
the cost estimate can each raise their own."""


class InputError(ValueError):
    """Bad input found before anything was created: the launchers print it (the problem and the fix) and exit 2."""


class StorageError(InputError):
    """The sweep's storage or its MLflow tracking store cannot be used as given: a scheme, credentials, a bucket,
    a database or a server that is not there or may not be written, or a sweep it does not hold."""


class CalibrationError(InputError):
    """What the cost estimate is given cannot be used, though the spec is fine: a dataset whose size neither its
    files nor --images tell, an estimate JSON or a cost record that is not what sweep.calibrate writes."""
