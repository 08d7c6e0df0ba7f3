"""The stages of the method, in the pipeline's order: pure functions of arrays and configs
(jit- and vmap-friendly; no file, clock, signal or progress bar: the pipeline attaches those
through one stages.loop.LoopHook).

    embed.py        W+ then FS embedding of a batch of images
    parse.py        the face parse of real images
    target_mask.py  the target segmentation of a (face, shape) pair, GAN inpainting included
    align.py        the alignment of the face to a reference under that mask, and F mixing
    blend.py        the blend of the face's and the colour reference's appearance
    loop.py         the lax.scan chunk runner every optimisation shares, sharded over devices
    optim.py        the optimisers: an optax optimiser per loop (Adam by default), the learning
                    rate and its schedule as data, the blend's projection
"""
