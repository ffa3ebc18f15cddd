"""Reading the answer: MLflow runs become the trials table (analysis.py), checked for artefacts (trust.py), and the
report (build.py: tables, plots.py, document.py, reproduction.py), the launcher's console output
(launcher_output.py, console_table.py) and the outcome tags written back to MLflow (outcome.py)."""
