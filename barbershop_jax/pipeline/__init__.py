"""Everything around the pure stages (stages/): the method's steps run over files and batches,
the Python API and the command line's jobs. The stages' runners, in the order a transfer runs
them:

    embed.py        images embedded in W+, then FS
    parse.py        the face parser's labels of each image
    target_mask.py  each (face, shape) pair's target mask
    align.py        the face aligned to each reference under that mask
    blend.py        each triple blended
    paste_back.py   results pasted back into their photos (when asked)
    run.py          Pipeline: every triple through the runners, in that order

and what they share: stage_runner.py (the one batched-stage loop: cache check, progress,
checkpoints, non-finite guard, background writes), context.py (a run's models, settings,
layout, images and keys), loop_hook.py (progress, checkpoints and stop requests inside the
loops). The entry points: hair_transfer.py (HairTransfer, the Python API), transfer_job.py
(`barbershop-jax transfer` as one call, returning its report), grid.py, plan.py, demo.py,
evaluate.py, doctor.py (what a run will do on this machine). The infrastructure, one package each:

    store/      the output folder: its layout (every file name), cache entries and keys,
                records, checkpoints (resume), step times, the manifest and results CSVs
    files/      image files, the run's sources (each image read and decoded once), contact sheets
    faces/      ordinary photos in (FFHQ crops from landmarks), results pasted back
    runtime/    run settings, batches and waves, progress bars, stop signals, the compilation cache
"""
