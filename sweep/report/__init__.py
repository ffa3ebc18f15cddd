"""Reading the answer: from a sweep's results (sweep.results: the trials table, each cell's outcome, the
statistics), the report (build.py: tables, plots.py, document.py, reproduction.py), the launcher's console output
(launcher_output.py, console_table.py) and the outcome tags written back to MLflow (outcome.py)."""
