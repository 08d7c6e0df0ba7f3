"""How a run runs: its settings (settings.py: RunSettings), batches and waves (batching.py),
progress bars (progress.py), stop signals (stopping.py), XLA's persistent compilation cache
(compile_cache.py)."""
