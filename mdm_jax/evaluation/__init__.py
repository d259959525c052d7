"""Sample-quality evaluation: metrics (metrics.py), feature networks, ``--mode=eval`` (run.py)."""
