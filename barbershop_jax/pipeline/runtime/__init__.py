"""How a run runs: its settings (settings.py: RunSettings), batches and waves (batching.py),
progress bars (progress.py), stop signals (stopping.py), XLA's persistent compilation cache
(compile_cache.py) with the stage programs' traces beside it (trace_cache.py), and the compiler
threads of a rehearsal (compile_ahead.py)."""
