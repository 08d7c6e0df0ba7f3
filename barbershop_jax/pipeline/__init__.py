"""Everything around the pure stages (stages/): the method's steps run over files and batches,
the Python API and the command line's jobs. The stages, in the order a transfer runs them:

    embed.py        images embedded in W+, then FS
    align.py        each (face, reference) pair: its target mask, then the face aligned to it
    blend.py        each triple blended
    run.py          Pipeline: every triple through the stages, in that order
    hair_transfer.py  HairTransfer, the Python API
    transfer_job.py   `barbershop-jax transfer` as one call (manifests, --part, CSVs)
    grid.py, plan.py, demo.py, evaluate.py, loop_hook.py

and the infrastructure around them, one package each:

    store/      the output folder: cache entries and keys, records, checkpoints (resume),
                step times, the manifest and results CSVs
    files/      image files, the run's sources (each image read and decoded once), contact sheets
    faces/      ordinary photos in (FFHQ crops from landmarks), results pasted back
    runtime/    batches and waves, progress bars, stop signals, the compilation cache
"""
