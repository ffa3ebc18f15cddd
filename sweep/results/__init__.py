"""What a sweep's MLflow runs say, as tables and statistics: read by the runner's adaptive seeds (sweep/tune) and by
the report (sweep/report), so neither reads through the other."""
