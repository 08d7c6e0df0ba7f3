"""Array operations below the models: resampling as PIL and PyTorch do it, and binary masks."""
