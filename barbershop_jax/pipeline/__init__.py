"""Everything around the pure stages: files, the store of results, image sources, batches and
waves, progress, checkpoints and stop signals, compile caches, paste-back, the Python API.

    sources.py      inputs read once each, named, hashed; DecodedImages: pixels decoded once a run
    embed.py        embed images (W+, FS) batch by batch through the store
    run.py          Pipeline: every triple through embedding, target mask, alignment, blending
      align_stage.py, blend_stage.py   its two batched stages around stages/align.py, blend.py
    hair_transfer.py  HairTransfer, the Python API; the checks of a batch's inputs
    transfer_job.py   `barbershop-jax transfer` as one call (manifests, --part, CSVs)
    store.py        the content-addressed store in the official layout (W+/, FS/, Align_*, Blend_*)
    records.py      TargetEdit, TransferResult
    batch_files.py  manifest CSVs, results and failures CSVs, the end table
    batching.py, progress.py, loop_hook.py, resume.py   batches and waves; bars; checkpoints, signals
    face_crop.py, landmarks.py   ordinary photos in (FFHQ crops), results pasted back
    image_files.py, compile_cache.py, evaluate.py, demo.py
"""
