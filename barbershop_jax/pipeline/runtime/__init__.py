"""How a run runs: batches and waves (batching.py), progress bars (progress.py), stop signals
(stopping.py), XLA's persistent compilation cache (compile_cache.py)."""
