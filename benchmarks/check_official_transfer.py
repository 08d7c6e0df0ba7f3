"""Stage-by-stage parity of the transfer stages with the official Barbershop code (not a test).

What it checks: the official PyTorch Alignment (target mask: merge, OpenCV heuristic, the two
GAN-inpainting rounds; align steps 1 and 2, F mixing) and Blending (masks, blend loop, final
render), run on CPU at 512 px, channel multiplier 1, random weights and constant noise with
tiny step counts, against barbershop_jax's stages (target_mask.py, align.py, blend.py) fed
with the OFFICIAL inputs of each stage (official label maps, W+/FS codes, target masks, Align
npz), so that errors do not compound. Besides the end-to-end stage outputs it evaluates our
losses and gradients at the official iterates (every step) and our F mixing from the official
A1/A2, so a mismatch can be pinned to one piece. Prints one table row per intermediate: max
|ours - official| and max |official| (arrays), or the agreement fraction (label maps).

Needs the shared official tool (/work/shared/tools/official, or $OFFICIAL_TOOLS: see its
README: the ZPdesu/Barbershop, rosinality/stylegan2-pytorch and zllrunning/face-parsing
snapshots under a .mirror/ folder) and a Python with torch, torchvision, opencv, scipy,
scikit-image plus jax/flax/optax (e.g. /work/venv-off/bin/python). It is not part of the test
suite. About 7 minutes on 2 CPU cores (the official run 2.5, ours mostly XLA compiles);
`--sections` picks parts of our side, `--part` one side.

Expect (random weights, 2 steps per loop): exact label maps and masks, losses within ~1e-6
relative, gradients within a few 1e-5 absolute (float32 noise, made discontinuous by BiSeNet's
ReLU / max-pool kinks: the official float64 gradient itself moves that much when the image
moves by float32 rounding); argmax labels of renders may flip a pixel or two; and where a
gradient element is within that noise of 0, Adam's first step (lr * sign) sends it the other
way: the last iterates, A1/A2 and the mixed F then differ by ~2 lr, which the table notes.

    PYTHONPATH=. /work/venv-off/bin/python benchmarks/check_official_transfer.py [--work DIR]
    ... --part official   # only the official run (its own process: it patches modules)
    ... --part ours       # only our side, from DIR/official.npz
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
TOOLS = Path(os.environ.get("OFFICIAL_TOOLS", "/work/shared/tools/official"))
IMAGES = ("astronaut", "coffee", "chelsea")   # face, shape reference, colour reference
STEPS = dict(w=3, fs=3, inpaint=2, align1=2, align2=2, blend=2)
SIZE = 512
SECTIONS = ("parse", "target", "align", "blend")


# ============================================================================ official side
def _rows18(x):
    """Latent arrays (..., rows, 512) zero-padded to 18 rows: the official target-mask loops
    use 18-row W+ (latent_avg repeated 18 times) even at 512 px (16 used), the others 16."""
    x = np.array(x, np.float32)
    pad = [(0, 0)] * x.ndim
    pad[-2] = (0, 18 - x.shape[-2])
    return np.pad(x, pad)


def _official(work: Path):
    import torch
    from PIL import Image
    from skimage import data

    sys.path.insert(0, str(TOOLS))
    import official_stages as S

    S.setup(work)  # the official options object is not needed here
    (work / "input").mkdir(exist_ok=True)
    paths = [str(work / "input" / f"{n}.png") for n in IMAGES]
    for n, p in zip(IMAGES, paths):
        Image.fromarray(getattr(data, n)()).convert("RGB").resize((SIZE, SIZE), Image.LANCZOS).save(p)
    out = {}
    emb = S.run_embedding(paths, steps_w=STEPS["w"], steps_fs=STEPS["fs"])
    for n in IMAGES:
        out[f"W/{n}"] = emb["W+"][n]
        out[f"FS/{n}/latent_in"] = emb["FS"][n]["latent_in"]
        out[f"FS/{n}/latent_F"] = emb["FS"][n]["latent_F"]
    m = S.STATE["mods"]

    def opt_recorder(make, log):
        """Wrap an optimizer factory: record each step's parameter (before) and gradient."""
        def wrapped(*a, **k):
            opt, param = make(*a, **k)
            step = opt.step

            def recorded_step(*sa, **sk):
                log["param"].append(_rows18(param.detach().numpy()))
                log["grad"].append(_rows18(param.grad.detach().numpy()))
                return step(*sa, **sk)
            opt.step = recorded_step
            return opt, param
        return wrapped

    for tag, (p1, p2) in {"a12": (paths[0], paths[1]), "a13": (paths[0], paths[2])}.items():
        o, _, _ = S._stage(align_steps1=STEPS["align1"], align_steps2=STEPS["align2"],
                           inpaint_steps1=STEPS["inpaint"], inpaint_steps2=STEPS["inpaint"])
        al = m.Alignment.Alignment(o)
        log = {k: [] for k in ("seg", "cds_latent", "cds_labels", "ce", "ce_wo", "ce_only", "style", "wo_target",
                               "A", "A_latent", "de_in", "de_D", "de_E", "param", "grad")}
        al.seg.register_forward_hook(lambda mod, i, r: log["seg"].append(r[0].detach().numpy()[0]))
        cds = al.create_down_seg

        def rec_cds(latent_in, _f=cds, _l=log):
            down_seg, gen_im = _f(latent_in)
            _l["cds_latent"].append(_rows18(latent_in.detach().numpy()[0]))
            _l["cds_labels"].append(down_seg.detach().argmax(1)[0].numpy().astype(np.int32))
            return down_seg, gen_im
        al.create_down_seg = rec_cds
        lb = al.loss_builder
        for name, key in (("cross_entropy_loss", "ce"), ("cross_entropy_loss_wo_background", "ce_wo"),
                          ("cross_entropy_loss_only_background", "ce_only"), ("style_loss", "style")):
            def rec_loss(*a, _f=getattr(lb, name), _k=key, _l=log, **k):
                r = _f(*a, **k)
                _l[_k].append(float(r.detach()))
                if _k == "ce_wo":
                    _l["wo_target"].append(a[1].numpy()[0].astype(np.int32))
                return r
            setattr(lb, name, rec_loss)
        g = al.net.generator
        gfwd = g.forward

        def rec_g(*a, _f=gfwd, _l=log, **k):
            r = _f(*a, **k)
            if k.get("end_layer") == 3:
                _l["A"].append(r[0].detach().numpy()[0].copy())
                _l["A_latent"].append(a[0][0].detach().numpy()[0].copy())
            return r
        g.forward = rec_g
        de = al.dilate_erosion

        def rec_de(mask, device, dilate_erosion=5, _f=de, _l=log):
            d, e = _f(mask, device, dilate_erosion=dilate_erosion)
            small = torch.nn.functional.interpolate(mask.float().cpu(), size=(256, 256), mode="nearest")
            _l["de_in"].append(small.numpy().reshape(256, 256))
            _l["de_D"].append(d.numpy().reshape(d.shape[-2:]))
            _l["de_E"].append(e.numpy().reshape(e.shape[-2:]))
            return d, e
        al.dilate_erosion = rec_de
        al.setup_align_optimizer = opt_recorder(al.setup_align_optimizer, log)
        masks = {}
        make_masks = al.create_target_segmentation_mask

        def rec_masks(*a, **k):
            res = make_masks(*a, **k)
            masks.update(zip(("target", "hair_target", "hair1", "hair2"), (t.numpy() for t in res)))
            return res
        al.create_target_segmentation_mask = rec_masks
        al.align_images(p1, p2, sign="realistic", align_more_region=False, smooth=5, save_intermediate=True)
        stem = f"{Path(p1).stem}_{Path(p2).stem}"
        npz = np.load(f"{o.output_dir}/Align_realistic/{stem}.npz")
        ni = STEPS["inpaint"]
        seg_real = log["seg"][:2]
        out.update({
            f"{tag}/logits_face": seg_real[0], f"{tag}/logits_ref": seg_real[1],
            f"{tag}/labels_face": seg_real[0].argmax(0).astype(np.int32),
            f"{tag}/labels_ref": seg_real[1].argmax(0).astype(np.int32),
            f"{tag}/target_heuristic": log["wo_target"][0],
            f"{tag}/round1_labels": log["cds_labels"][ni - 1],
            f"{tag}/round2_target": log["wo_target"][ni],
            f"{tag}/round2_labels": log["cds_labels"][2 * ni - 1],
            f"{tag}/target": masks["target"][0].astype(np.int32),
            f"{tag}/hair_target": masks["hair_target"].reshape(SIZE, SIZE),
            f"{tag}/hair1": masks["hair1"][0].astype(np.float32), f"{tag}/hair2": masks["hair2"][0].astype(np.float32),
            f"{tag}/cds_latent": np.stack(log["cds_latent"]), f"{tag}/cds_labels": np.stack(log["cds_labels"]),
            f"{tag}/param": np.stack(log["param"]), f"{tag}/grad": np.stack(log["grad"]),
            f"{tag}/ce_wo": np.array(log["ce_wo"]), f"{tag}/ce_only": np.array(log["ce_only"]),
            f"{tag}/ce": np.array(log["ce"]), f"{tag}/style": np.array(log["style"]),
            f"{tag}/A1": log["A"][0], f"{tag}/A2": log["A"][1],
            f"{tag}/A1_latent": log["A_latent"][0], f"{tag}/A2_latent": log["A_latent"][1],
            f"{tag}/de_in": np.stack(log["de_in"]), f"{tag}/de_D": np.stack(log["de_D"]),
            f"{tag}/de_E": np.stack(log["de_E"]),
            f"{tag}/latent_in": npz["latent_in"], f"{tag}/latent_F": npz["latent_F"],
            f"{tag}/image": np.asarray(Image.open(f"{o.output_dir}/Align_realistic/{stem}.png")),
        })
        print(f"official {tag}: target classes {np.unique(masks['target']).tolist()}, "
              f"hair px target {int((masks['target'] == 10).sum())} face {int(masks['hair1'].sum())} "
              f"ref {int(masks['hair2'].sum())}", flush=True)

    o, _, _ = S._stage(blend_steps=STEPS["blend"])
    bl = m.Blending.Blending(o)
    log = {k: [] for k in ("seg", "loss", "face", "hair", "mask_face", "mask_hair", "param", "grad", "gen_small")}
    bl.seg.register_forward_hook(lambda mod, i, r: log["seg"].append(r[0].detach().numpy()[0]))
    bfwd = bl.loss_builder.forward

    def rec_blend_loss(gen_im, im_1, im_3, mask_face, mask_hair, _f=bfwd, _l=log):
        loss, d = _f(gen_im, im_1, im_3, mask_face, mask_hair)
        _l["loss"].append(float(loss)), _l["face"].append(float(d["face"])), _l["hair"].append(float(d["hair"]))
        _l["mask_face"].append(mask_face.numpy().reshape(mask_face.shape[-2:]))
        _l["mask_hair"].append(mask_hair.numpy().reshape(mask_hair.shape[-2:]))
        _l["gen_small"].append(gen_im.detach().numpy()[0].copy())
        return loss, d
    bl.loss_builder.forward = rec_blend_loss
    bl.setup_blend_optimizer = opt_recorder(bl.setup_blend_optimizer, log)
    p1, p2, p3 = paths
    bl.blend_images(p1, p2, p3, sign="realistic")
    stem = "_".join(IMAGES)
    npz = np.load(f"{o.output_dir}/Blend_realistic/{stem}.npz")
    out.update({
        "blend/logits_face256": log["seg"][0], "blend/logits_color256": log["seg"][1],
        "blend/labels_face256": log["seg"][0].argmax(0).astype(np.int32),
        "blend/labels_color256": log["seg"][1].argmax(0).astype(np.int32),
        "blend/labels_X": log["seg"][2].argmax(0).astype(np.int32),
        "blend/mask_face": log["mask_face"][0], "blend/mask_hair": log["mask_hair"][0],
        "blend/loss": np.array(log["loss"]), "blend/face": np.array(log["face"]), "blend/hair": np.array(log["hair"]),
        "blend/param": np.stack(log["param"]), "blend/grad": np.stack(log["grad"]),
        "blend/gen_small": np.stack(log["gen_small"]),
        "blend/latent_in": npz["latent_in"], "blend/latent_F": npz["latent_F"],
        "blend/image": np.asarray(Image.open(f"{o.output_dir}/{stem}_realistic.png")),
    })
    S.teardown()
    np.savez(work / "official.npz", **out)
    print(f"official: {len(out)} arrays -> {work / 'official.npz'}", flush=True)


# ============================================================================ our side
def _convert(work: Path):
    """Our converters on the official random weights (DIR/jax_weights), once."""
    dst = work / "jax_weights"
    pre = work / "pretrained"
    lin = work / "lpips_vgg_v0.1.pth"  # the official masked_lpips / lpips v0.1 linear layers
    if not lin.exists():
        mirror = Path(os.environ["OFFICIAL_MIRROR"]) if os.environ.get("OFFICIAL_MIRROR") else next(
            p / ".mirror" for p in TOOLS.parents if (p / ".mirror").is_dir())  # as official_ref finds it
        blob = subprocess.run(["git", f"--git-dir={mirror / 'ZPdesu+Barbershop' / 'repo'}", "show",
                               "HEAD:losses/masked_lpips/weights/v0.1/vgg.pth"], check=True, capture_output=True).stdout
        lin.write_bytes(blob)
    # `barbershop-jax convert` (convert/cli.py), without the entry point that registers it in an
    # installed barbershop-jax: this Python may run the source tree through PYTHONPATH alone.
    cli = [sys.executable, "-c", "import argparse, sys; from convert.cli import add_commands; "
           "p = argparse.ArgumentParser(prog='barbershop-jax'); add_commands(p.add_subparsers(required=True)); "
           "a = p.parse_args(); a.func(a)", "convert"]
    env = {**os.environ, "PYTHONPATH": f"{ROOT}:{os.environ.get('PYTHONPATH', '')}"}
    for name, args in (("stylegan2", [str(pre / f"random{SIZE}.pt"), str(dst), "--pca-samples", "0"]),
                       ("bisenet", [str(pre / "seg.pth"), str(dst)]),
                       ("vgg16", [str(pre / "vgg16_random.pth"), str(dst), "--lpips-weights", str(lin)])):
        if not (dst / name).exists():
            subprocess.run(cli + [name] + args, check=True, env=env)
    return dst


class Table:
    """Rows of the comparison; each is also printed as it comes (the run is long)."""

    def __init__(self):
        self.rows = []

    def _add(self, row):
        self.rows.append(row)
        print("  " + " | ".join(map(str, row)), flush=True)

    def arr(self, stage, name, ours, official, note=""):
        a, b = np.asarray(ours, np.float64), np.asarray(official, np.float64)
        if a.shape != b.shape:
            self._add((stage, name, f"SHAPE {a.shape} vs {b.shape}", "", "", note))
            return
        d, s = float(np.abs(a - b).max()), float(np.abs(b).max())
        if np.asarray(official).dtype == np.uint8 and d > 0 and not note:
            note = f"{int((a != b).sum())} of {a.size} values differ"
        self._add((stage, name, f"{d:.3g}", f"{s:.3g}", f"{d / s if s else d:.2g}", note))

    def labels(self, stage, name, ours, official, note=""):
        a, b = np.asarray(ours), np.asarray(official)
        diff = int((a != b).sum())
        self._add((stage, name, f"{diff} px differ", f"{a.size} px",
                          f"agree {1 - diff / a.size:.6f}", note))

    def show(self):
        head = ("stage", "intermediate", "max |diff|", "max |official|", "rel / agreement", "note")
        widths = [max(len(str(r[i])) for r in self.rows + [head]) for i in range(len(head))]
        fmt = " | ".join(f"{{:{w}}}" for w in widths)
        print(fmt.format(*head))
        print("-+-".join("-" * w for w in widths))
        for r in self.rows:
            print(fmt.format(*r))


def _ours(work: Path, sections=SECTIONS):

    import jax
    import jax.numpy as jnp

    jax.config.update("jax_default_matmul_precision", "highest")
    from barbershop_jax.config import TransferConfig
    from barbershop_jax.losses import segmentation
    from barbershop_jax.losses.lpips import masked_lpips
    from barbershop_jax.losses.style import style_loss
    from barbershop_jax.models import bisenet, stylegan2, vgg16
    from barbershop_jax.models.bundle import Models
    from barbershop_jax.ops import masks, resample
    from barbershop_jax.pipeline.files import image_files as image_io
    from barbershop_jax.stages import align as alignment
    from barbershop_jax.stages import blend as blending
    from barbershop_jax.stages import loop, target_mask
    from barbershop_jax.stages.optim import ADAM

    start = time.perf_counter()
    ref = dict(np.load(work / "official.npz"))
    wdir = _convert(work)
    # No p-norm statistics (converted with --pca-samples 0): only the embedding reads them.
    models = Models(stylegan2.load(wdir), bisenet.load(wdir), vgg16.load(wdir), None)
    g, parser, vgg = models.generator, models.parser, models.vgg
    lm = parser.labels
    bg, hair_id = lm.id("background"), lm.id("hair")
    hair_classes = jnp.asarray(masks.class_mask((hair_id,), len(lm.names)))  # the region as the stages take it
    ni, n1, n2, nb = STEPS["inpaint"], STEPS["align1"], STEPS["align2"], STEPS["blend"]
    cfg = TransferConfig(noise="const", inpaint_steps=ni, align_steps1=n1, align_steps2=n2,
                         blend_steps=nb).resolve(SIZE)
    lr, na, P, L = cfg.learning_rate, cfg.align_latents, cfg.parse_size, cfg.loss_size
    key = jax.random.PRNGKey(0)
    t = Table()
    nhwc = lambda f: np.asarray(f).reshape(f.shape[-3:]).transpose(1, 2, 0)  # noqa: E731  (1,C,r,r) -> (r,r,C)
    pix = {n: image_io.load_rgb(work / "input" / f"{n}.png") for n in IMAGES}
    im01 = {n: jnp.asarray(p, jnp.float32)[None] / 255.0 for n, p in pix.items()}
    pairs = {"a12": IMAGES[:2], "a13": (IMAGES[0], IMAGES[2])}

    # Our losses composed from the public modules, evaluated at the official iterates (value
    # and gradient): they pin a mismatch to the formula, the end-to-end rows to the stage.
    def render(head, tail):
        return g.render(jnp.concatenate([head, tail[head.shape[0]:]])[None], noise="const")

    def parse(image):
        return parser.segment_generated(image, parse_size=P)[0]

    @jax.jit
    def inpaint_loss(head, target, keep):
        def f(head):
            logits = parse(render(head, g.latent_avg[None].repeat(g.config.n_latent, 0)))
            wo = segmentation.cross_entropy_without(logits, target, bg, False)
            only = segmentation.cross_entropy_only(logits, keep, bg, False)
            return cfg.ce_lambda * (wo + only), (wo, only, logits)
        return jax.value_and_grad(f, has_aux=True)(head)

    @jax.jit
    def step1_loss(head, s_code, target):
        return jax.value_and_grad(lambda h: cfg.ce_lambda * segmentation.cross_entropy(parse(render(h, s_code)),
                                                                                       target))(head)

    @jax.jit
    def reference_hair(w_ref, s_ref):  # the fixed side of step 2's style loss
        image = render(w_ref[:na], s_ref)
        hair = (jnp.argmax(parse(image), -1) == hair_id).astype(jnp.float32)
        return resample.bicubic_downsample(image, SIZE // L), resample.nearest_resize(hair[None], L)

    @jax.jit
    def step2_loss(head, s_ref, target, ref_small, ref_hair):
        def f(head):
            image = render(head, s_ref)
            logits = parse(image)
            ce = cfg.ce_lambda * segmentation.cross_entropy(logits, target)
            hair = resample.nearest_resize((jnp.argmax(logits, -1) == hair_id).astype(jnp.float32)[None], L)
            small = resample.bicubic_downsample(image, SIZE // L)
            style = cfg.style_lambda * style_loss(vgg, ref_small, small, ref_hair, hair, size=L)[0]
            return ce + style, (ce, style)
        return jax.value_and_grad(f, has_aux=True)(head)

    @jax.jit
    def blend_loss(u, x, face_mask, hair_mask):
        def f(u):
            w = x.s_face + u * (x.s_color - x.s_face)
            image = g.render_from_features(x.f_blend[None], w[None], block=3, noise="const")
            small = resample.bicubic_downsample(image, SIZE // L)
            face = masked_lpips(vgg, small, x.face_small[None], face_mask[None], guard_empty=False)[0]
            hair = masked_lpips(vgg, small, x.color_small[None], hair_mask[None], guard_empty=False)[0]
            return cfg.face_lambda * face + cfg.hair_lambda * hair, (face, hair)
        return jax.value_and_grad(f, has_aux=True)(u)

    def guarded(stage, name, fn):
        """Rows that use our private helpers (per-round and per-loop intermediates): n/a if
        their API changed, the public stage calls are compared regardless."""
        try:
            fn()
        except Exception as e:  # noqa: BLE001
            t._add((stage, name, "n/a", "", "", f"{type(e).__name__}: {str(e)[:70]}"))

    # --------------------------------------------------------------- parse (real images)
    if "parse" in sections:
        print(f"== parse ({time.perf_counter() - start:.0f} s)", flush=True)
        for tag, (nf, nr) in pairs.items():
            for side, n in (("face", nf), ("ref", nr)):
                logits = np.asarray(parser.segment(im01[n], parse_size=P))[0]
                off = ref[f"{tag}/logits_{side}"].transpose(1, 2, 0)
                t.arr("parse", f"{tag} logits {side} ({n})", logits, off)
                t.labels("parse", f"{tag} labels {side}", logits.argmax(-1), ref[f"{tag}/labels_{side}"],
                         _flip_note(logits, off))

    # --------------------------------------------------------------- target mask
    if "target" in sections:
        print(f"== target ({time.perf_counter() - start:.0f} s)", flush=True)
        for tag in pairs:
            seg1, seg2 = ref[f"{tag}/labels_face"], ref[f"{tag}/labels_ref"]
            merged = target_mask.merge_labels(seg1, seg2, lm)
            t.labels("target", f"{tag} hair1, hair2", np.stack([merged.hair_face, merged.hair_shape]),
                     np.stack([ref[f"{tag}/hair1"], ref[f"{tag}/hair2"]]).astype(bool))
            t.labels("target", f"{tag} heuristic target (merge + cv2 NS)", target_mask.heuristic_target(merged, lm),
                     ref[f"{tag}/target_heuristic"])
            lat, grads = ref[f"{tag}/cds_latent"], ref[f"{tag}/grad"]
            for k in range(2 * ni):  # both rounds, at the official iterates
                tgt = ref[f"{tag}/target_heuristic"] if k < ni else ref[f"{tag}/round2_target"]
                (_, (wo, only, logits)), gr = inpaint_loss(jnp.asarray(lat[k, :na]), jnp.asarray(tgt),
                                                           jnp.asarray(merged.keep))
                logits = np.asarray(logits)
                t.arr("target", f"{tag} GAN step {k}: CE w/o bg, CE only bg", [float(wo), float(only)],
                      [ref[f"{tag}/ce_wo"][k], ref[f"{tag}/ce_only"][k]])
                t.arr("target", f"{tag} GAN step {k}: grad w[0:6]", gr, grads[k][0, :na])
                t.labels("target", f"{tag} GAN step {k}: render labels", logits.argmax(-1), ref[f"{tag}/cds_labels"][k],
                         _flip_note(logits, ref[f"{tag}/cds_labels"][k]))
            inputs = jax.tree.map(lambda x: x[None], target_mask.prepare(seg1, seg2, lm, key))
            rkeys = jax.random.split(key, 1)

            def rounds(inputs=inputs, tag=tag, rkeys=rkeys):  # each round from the official input
                r = target_mask._round(models, jnp.asarray(ref[f"{tag}/target_heuristic"])[None], inputs.keep,
                                       rkeys, cfg, loop.Loop("round 1"), None)
                t.labels("target", f"{tag} round 1 labels", (r[0] if isinstance(r, tuple) else r)[0],
                         ref[f"{tag}/round1_labels"])
                prev, tgt2 = target_mask._after_round1(inputs, jnp.asarray(ref[f"{tag}/round1_labels"])[None], bg)
                t.labels("target", f"{tag} round 2 target", tgt2[0], ref[f"{tag}/round2_target"])
                r = target_mask._round(models, jnp.asarray(ref[f"{tag}/round2_target"])[None], inputs.keep,
                                       rkeys, cfg, loop.Loop("round 2"), None)
                t.labels("target", f"{tag} round 2 labels", (r[0] if isinstance(r, tuple) else r)[0],
                         ref[f"{tag}/round2_labels"])
                final = target_mask._after_round2(inputs, prev, jnp.asarray(ref[f"{tag}/round2_labels"])[None], bg)
                t.labels("target", f"{tag} final target (official round labels)", final[0], ref[f"{tag}/target"])
            guarded("target", f"{tag} per-round", rounds)
            full = target_mask.gan_inpaint(models, inputs, cfg)
            t.labels("target", f"{tag} final target (gan_inpaint end to end)", full[0], ref[f"{tag}/target"])

    # --------------------------------------------------------------- alignment
    if "align" in sections:
        print(f"== align ({time.perf_counter() - start:.0f} s)", flush=True)
        for tag, (nf, nr) in pairs.items():
            target = jnp.asarray(ref[f"{tag}/target"])
            x = alignment.AlignInputs(
                w_face=jnp.asarray(ref[f"W/{nf}"][0]), s_face=jnp.asarray(ref[f"FS/{nf}/latent_in"][0]),
                f_face=jnp.asarray(nhwc(ref[f"FS/{nf}/latent_F"])),
                w_ref=jnp.asarray(ref[f"W/{nr}"][0]), s_ref=jnp.asarray(ref[f"FS/{nr}/latent_in"][0]),
                f_ref=jnp.asarray(nhwc(ref[f"FS/{nr}/latent_F"])), target=target,
                hair_face=jnp.asarray(ref[f"{tag}/hair1"]), hair_ref=jnp.asarray(ref[f"{tag}/hair2"]), key=key,
                region_classes=hair_classes)
            xb = jax.tree.map(lambda a: a[None], x)
            grads, params = ref[f"{tag}/grad"][2 * ni:, 0], ref[f"{tag}/param"][2 * ni:, 0]
            for k in range(n1):
                loss, gr = step1_loss(jnp.asarray(params[k, :na]), x.s_face, target)
                t.arr("align", f"{tag} step1 {k}: CE", float(loss), ref[f"{tag}/ce"][k])
                t.arr("align", f"{tag} step1 {k}: grad w[0:6]", gr, grads[k, :na])
            ref_small, ref_hair = reference_hair(x.w_ref, x.s_ref)
            for k in range(n2):
                (_, (ce, style)), gr = step2_loss(jnp.asarray(params[n1 + k, :na]), x.s_ref, target, ref_small, ref_hair)
                t.arr("align", f"{tag} step2 {k}: CE", float(ce), ref[f"{tag}/ce"][n1 + k])
                t.arr("align", f"{tag} step2 {k}: style", float(style), ref[f"{tag}/style"][k])
                t.arr("align", f"{tag} step2 {k}: grad w[0:6]", gr, grads[n1 + k, :na])
            off_head1, off_head2 = ref[f"{tag}/A1_latent"][:na], ref[f"{tag}/A2_latent"][:na]

            def loops(xb=xb, tag=tag, off_head1=off_head1, off_head2=off_head2, grads=grads):
                step1 = jax.vmap(alignment.plain_ce_target)(xb.s_face, xb.target, xb.key)
                heads1, _ = alignment.fit_segmentation(models, xb.w_face[:, :na], step1, n1, cfg, loop.Loop("s1"))
                t.arr("align", f"{tag} step1 last iterate w[0:6]", heads1[0], off_head1,
                      _adam_note(heads1[0], off_head1, grads[0, :na], lr))
                _, small, hair = alignment._between_steps(models, heads1, xb, cfg=cfg)
                t.arr("align", f"{tag} step2 reference hair @256", hair[0], ref_hair[0])
                state, _ = loop.run(alignment._step2, cfg, models, ADAM.start(xb.w_ref[:, :na], cfg.learning_rate),
                                    (xb.s_ref, xb.target, small, hair, xb.key, xb.region_classes), n2)
                t.arr("align", f"{tag} step2 last iterate w[0:6]", state.result[0], off_head2,
                      _adam_note(state.result[0], off_head2, grads[n1, :na], lr))
            guarded("align", f"{tag} per-loop", loops)
            for name, head, s_code in (("A1", off_head1, x.s_face), ("A2", off_head2, x.s_ref)):
                f = g.features(jnp.concatenate([jnp.asarray(head), s_code[na:]])[None], block=3, noise="const")[0][0]
                t.arr("align", f"{tag} {name} (our G at the official last iterate)", f, nhwc(ref[f"{tag}/{name}"][None]))
            hair_t = (target == hair_id).astype(jnp.float32)
            union = 1.0 - (1.0 - x.hair_face) * (1.0 - hair_t)
            for i, (m, grow) in enumerate(((union, True), (hair_t, False), (x.hair_ref * hair_t, False))):
                small = resample.nearest_resize(m[None], L)[0]
                got = masks.dilate(small, cfg.smooth) if grow else masks.erode(small, cfg.smooth)
                t.arr("align", f"{tag} mixing mask {i} @256 ({'dilated' if grow else 'eroded'})", got,
                      ref[f"{tag}/de_{'D' if grow else 'E'}"][i])
            f_mix = alignment.mix_structure(jnp.asarray(nhwc(ref[f"{tag}/A1"][None])),
                                            jnp.asarray(nhwc(ref[f"{tag}/A2"][None])),
                                            x.f_face, x.f_ref, x.hair_face, x.hair_ref, hair_t, cfg)
            t.arr("align", f"{tag} mixed F (mix_structure, official A1, A2)", f_mix, nhwc(ref[f"{tag}/latent_F"]))
            img = g.render_from_features(jnp.asarray(nhwc(ref[f"{tag}/latent_F"]))[None],
                                         jnp.asarray(ref[f"{tag}/latent_in"]), block=3, noise="const")
            t.arr("align", f"{tag} Align PNG (uint8) from the official npz", image_io.to_uint8(np.asarray(img[0])),
                  ref[f"{tag}/image"])
            out = alignment.align(models, xb, cfg)
            t.arr("align", f"{tag} Align latent_in (align end to end)", out.latent_in[0], ref[f"{tag}/latent_in"][0])
            t.arr("align", f"{tag} Align latent_F (align end to end)", out.structure_f[0], nhwc(ref[f"{tag}/latent_F"]))
            t.arr("align", f"{tag} Align PNG (align end to end)", image_io.to_uint8(np.asarray(out.image[0])),
                  ref[f"{tag}/image"])

    # --------------------------------------------------------------- blending
    if "blend" in sections:
        print(f"== blend ({time.perf_counter() - start:.0f} s)", flush=True)
        nf, _, nc = IMAGES
        small = {n: resample.uint8_to_signed(resample.lanczos_resize(pix[n], L)) for n in (nf, nc)}
        hair256 = {}
        for side, n in (("face", nf), ("color", nc)):
            logits = np.asarray(parser.segment(im01[n], parse_size=cfg.blend_parse_size))[0]
            off = ref[f"blend/logits_{side}256"].transpose(1, 2, 0)
            t.arr("blend", f"logits {side} @256 ({n})", logits, off)
            t.labels("blend", f"labels {side} @256", logits.argmax(-1), ref[f"blend/labels_{side}256"],
                     _flip_note(logits, off))
            hair256[side] = (ref[f"blend/labels_{side}256"] == hair_id).astype(np.float32)
        bx = blending.BlendInputs(
            s_face=jnp.asarray(ref["a13/latent_in"][0]), s_color=jnp.asarray(ref[f"FS/{nc}/latent_in"][0]),
            f_blend=jnp.asarray(nhwc(ref["a13/latent_F"])), f_final=jnp.asarray(nhwc(ref["a12/latent_F"])),
            face_small=jnp.asarray(small[nf]), color_small=jnp.asarray(small[nc]),
            hair_face=jnp.asarray(hair256["face"]), hair_color=jnp.asarray(hair256["color"]), key=key,
            region_classes=hair_classes)
        bxb = jax.tree.map(lambda a: a[None], bx)
        face_mask, hair_mask = blending.blend_masks(models, bxb, cfg=cfg)
        t.arr("blend", "face-region mask (blend_masks)", face_mask[0], ref["blend/mask_face"])
        t.arr("blend", "HM_3E colour hair eroded (blend_masks)", hair_mask[0], ref["blend/mask_hair"])
        image_x = g.render_from_features(bx.f_blend[None], bx.s_face[None], block=3, noise="const")
        logits = np.asarray(parse(image_x))
        t.labels("blend", "labels of I_X", logits.argmax(-1), ref["blend/labels_X"], _flip_note(logits, ref["blend/labels_X"]))
        fm, hm = jnp.asarray(ref["blend/mask_face"]), jnp.asarray(ref["blend/mask_hair"])
        la = g.config.n_latent
        for k in range(nb):
            (loss, (face, hair)), gr = blend_loss(jnp.asarray(ref["blend/param"][k][:la]), bx, fm, hm)
            t.arr("blend", f"step {k}: LPIPS face, hair, total", [float(face), float(hair), float(loss)],
                  [ref["blend/face"][k], ref["blend/hair"][k], ref["blend/loss"][k]])
            t.arr("blend", f"step {k}: grad u", gr, ref["blend/grad"][k][:la])
        out = blending.blend(models, bxb, cfg)
        t.arr("blend", "Blend latent_in (blend end to end)", out.latent_in[0], ref["blend/latent_in"][0])
        t.arr("blend", "Blend latent_F (blend end to end)", out.structure_f[0], nhwc(ref["blend/latent_F"]))
        t.arr("blend", "final PNG (blend end to end)", image_io.to_uint8(np.asarray(out.image[0])), ref["blend/image"])
        img = g.render_from_features(jnp.asarray(nhwc(ref["blend/latent_F"]))[None], jnp.asarray(ref["blend/latent_in"]),
                                     block=3, noise="const")
        t.arr("blend", "final PNG from the official Blend npz", image_io.to_uint8(np.asarray(img[0])),
              ref["blend/image"])
    print(f"== done ({time.perf_counter() - start:.0f} s)\n", flush=True)
    t.show()


def _adam_note(ours, official, first_grad, lr):
    """Elements that moved apart by about 2 lr: Adam's first step is lr * sign(grad), so an
    element whose gradient is within float32 noise of 0 may step the other way."""
    d = np.abs(np.asarray(ours, np.float64) - official)
    big = d > lr / 2
    if not big.any():
        return ""
    return (f"{int(big.sum())} element(s) ~2 lr apart (official first grad there "
            f"{', '.join(f'{v:.2g}' for v in np.ravel(first_grad)[np.ravel(big)][:4])}); "
            f"elsewhere max diff {d[~big].max():.2g}")


def _flip_note(logits, official):
    """Where the argmaxes differ, the top-2 logit margin there (small = a near tie): the
    official's when its logits are given, else ours (`official` an (H, W) label map)."""
    official_labels = official if official.ndim == 2 else official.argmax(-1)
    where = logits.argmax(-1) != official_labels
    if not where.any():
        return ""
    top2 = np.sort(logits if official.ndim == 2 else official, axis=-1)[..., -2:]
    margin = (top2[..., 1] - top2[..., 0])[where]
    return f"{'our' if official.ndim == 2 else 'official'} top-2 logit margin at flips <= {margin.max():.2g}"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", default="/tmp/cmp/work", type=Path)
    ap.add_argument("--part", choices=("both", "official", "ours"), default="both")
    ap.add_argument("--sections", nargs="+", choices=SECTIONS, default=SECTIONS,
                    help="which of our stages to compare (default: all)")
    args = ap.parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    if args.part == "official":
        return _official(args.work)
    if args.part == "ours":
        return _ours(args.work, tuple(args.sections))
    for part in ("official", "ours"):  # separate processes: the official run patches modules
        extra = ["--sections", *args.sections] if part == "ours" else []
        subprocess.run([sys.executable, __file__, "--work", str(args.work), "--part", part, *extra], check=True,
                       env={**os.environ, "PYTHONPATH": f"{ROOT}:{os.environ.get('PYTHONPATH', '')}"})


if __name__ == "__main__":
    main()
