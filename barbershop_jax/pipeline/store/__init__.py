"""The output folder: every file name in it (layout.py), cache entries and their keys
(cache.py), what a transfer takes and gives (records.py), the loops' checkpoints (resume.py),
measured step times (step_times.py), and the manifest, results and failures CSVs
(batch_files.py)."""
