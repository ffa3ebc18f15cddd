"""Where a sweep lives: its storage, local or S3 (storage.py), and its MLflow experiment (mlflow_experiment.py)."""
