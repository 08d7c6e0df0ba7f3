"""The PyTorch reference of every optimisation stage's step, for the benchmark suite.

Each is the official loop body (Barbershop's embedding.py, Alignment.py, Blending.py and the
target mask's GAN inpainting), with the official algorithm's costs: tests/torch_stylegan2.py
(per-sample modulated weights, grouped convolutions, fresh noise at every render, gradients
to the latents only), tests/torch_bisenet.py (the face parser at its input size), the lpips
package's LPIPS-VGG (its VGG slices for the Gram style loss, its spatial form for the masked
LPIPS of blending), Adam. Random weights and inputs: speed does not depend on them.

`batch` 1 runs as the official code does (one image per optimiser); larger batches stack
independent problems in one forward pass (a batched port of the official code: the loss is
the sum of the per-image losses, so each image gets its own gradient, and Adam is elementwise).
`compile=True` wraps the forward pass and loss in `torch.compile` (the backward comes from
AOTAutograd).
"""
from __future__ import annotations

import statistics
import sys
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "tests")]

# Per-stage sizes of the official pipeline at 1024 px (scaled down with the generator).
N_CLASSES = 16
ALIGN_LATENTS = 6


class Nets:
    """The PyTorch networks the stage steps share, on one device."""

    def __init__(self, size: int, device: str, seed: int = 0, channel_max: int = 512, lpips_size: int | None = None):
        import lpips
        import torch
        import torch_bisenet as TB
        import torch_stylegan2 as T

        torch.manual_seed(seed)
        self.size, self.device = size, device
        self.generator = T.realistic_init_(T.Generator(size, 512, 8, channel_multiplier=2,
                                                           channel_max=channel_max)).eval().to(device)
        self.parser = TB.BiSeNet(N_CLASSES).eval().to(device)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self.lpips = lpips.LPIPS(net="vgg", pretrained=True, pnet_rand=True, verbose=False).eval().to(device)
            self.lpips_spatial = lpips.LPIPS(net="vgg", pretrained=True, pnet_rand=True, spatial=True,
                                             verbose=False).eval().to(device)
        for net in (self.generator, self.parser, self.lpips, self.lpips_spatial):
            net.requires_grad_(False)
        self.noise_shapes = [n.shape[2:] for n in self.generator.const_noise()]
        self.imagenet_mean, self.imagenet_std = TB.IMAGENET_MEAN.to(device), TB.IMAGENET_STD.to(device)
        self.parse_size = min(512, size)
        self.loss_size = min(256, size // 2)          # masks, style loss, blend LPIPS
        self.lpips_size = lpips_size or self.loss_size  # the embedding's LPIPS

    def segment(self, image):
        """The parser's main-head logits of a generator image (Barbershop's call, unclamped)."""
        import torch_bisenet as TB

        x = TB.bicubic_downsample((image + 1) / 2, image.shape[2] // self.parse_size)
        return self.parser((x - self.imagenet_mean) / self.imagenet_std)[0]

    def noise(self, batch):
        import torch
        return [torch.randn(batch, 1, *s, device=self.device) for s in self.noise_shapes]

    def vgg_taps(self, x, n_slices=4):
        """relu1_2 .. relu4_3 of the lpips package's VGG16 (the style loss's taps)."""
        net, out = self.lpips.net, []
        for i in range(1, n_slices + 1):
            x = getattr(net, f"slice{i}")(x)
            out.append(x)
        return out


def _gram(f):
    b, c, h, w = f.shape
    f = f.reshape(b, c, h * w)
    return f @ f.transpose(1, 2) / (c * h * w)


def make_step(nets: Nets, stage: str, batch: int, compile: bool = False):
    """(step, params): one optimisation step of `stage` on `batch` images (loss, backward,
    Adam), and the tensors it optimises."""
    import torch
    import torch.nn.functional as F
    import torch_bisenet as TB

    g, dev, size = nets.generator, nets.device, nets.size
    n_latent = g.n_latent
    torch.manual_seed(1)
    w_start = torch.randn(batch, n_latent, 512, device=dev) * 0.1
    target_full = torch.rand(batch, 3, size, size, device=dev) * 2 - 1
    small = nets.loss_size if stage in ("align2", "blend") else nets.lpips_size
    target_small = torch.rand(batch, 3, small, small, device=dev) * 2 - 1
    labels = torch.randint(0, N_CLASSES, (batch, nets.parse_size, nets.parse_size), device=dev)
    mask = (torch.rand(batch, 1, small, small, device=dev) > 0.5).float()
    x_mean, x_comp, x_std = (torch.randn(512, device=dev), torch.randn(512, 512, device=dev),
                             torch.rand(512, device=dev) + 0.5)
    s_index = max(0, n_latent - 11)

    if stage == "W+":
        w = w_start.clone().requires_grad_(True)
        params = [w]

        def loss_fn(w, noise):
            _, img = g(w, noise)
            l2 = ((img - target_full) ** 2).mean() * batch
            percept = nets.lpips(TB.bicubic_downsample(img, size // small), target_small).sum()
            pn = ((F.leaky_relu(w, 5) - x_mean) @ x_comp.T / x_std).pow(2).mean() * batch
            return l2 + percept + 0.001 * pn
    elif stage == "FS":
        with torch.no_grad():
            f_init, _ = g(w_start, nets.noise(batch), end_layer=3)
        w = w_start[:, s_index:].clone().requires_grad_(True)
        f = f_init.clone().requires_grad_(True)
        params = [w, f]

        def loss_fn(w, f, noise):
            latent = torch.cat([w_start[:, :s_index], w], 1)
            _, img = g(latent, noise, start_layer=4, layer_in=f)
            l2 = ((img - target_full) ** 2).mean() * batch
            percept = nets.lpips(TB.bicubic_downsample(img, size // small), target_small).sum()
            pn = ((F.leaky_relu(w, 5) - x_mean) @ x_comp.T / x_std).pow(2).mean() * batch
            return l2 + percept + 0.001 * pn
    elif stage == "segmentation":  # target-mask inpainting rounds and align step 1
        head = w_start[:, :ALIGN_LATENTS].clone().requires_grad_(True)
        params = [head]
        keep = (labels != 0).float()

        def loss_fn(head, noise):
            _, img = g(torch.cat([head, w_start[:, ALIGN_LATENTS:]], 1), noise)
            logits = nets.segment(img)
            ce = F.cross_entropy(logits, labels, reduction="none")
            bg = F.cross_entropy(logits, torch.zeros_like(labels), reduction="none")
            return ((ce * keep).sum((1, 2)) / keep.sum((1, 2)) + (bg * (1 - keep)).mean((1, 2))).sum()
    elif stage == "align2":
        head = w_start[:, :ALIGN_LATENTS].clone().requires_grad_(True)
        params = [head]
        ref_small = target_small * mask

        def to_style_size(x):  # StyleLoss resizes its inputs to 256 px (the identity at 1024 px)
            if x.shape[-1] == 256:
                return x
            return F.interpolate(x, size=(256, 256), mode="bilinear", align_corners=True)

        def loss_fn(head, noise):
            _, img = g(torch.cat([head, w_start[:, ALIGN_LATENTS:]], 1), noise)
            logits = nets.segment(img)
            ce = F.cross_entropy(logits, labels) * batch
            hair = (logits.argmax(1, keepdim=True) == 10).float().detach()
            hair = F.interpolate(hair, size=(small, small), mode="nearest")
            img_small = TB.bicubic_downsample(img, size // small)
            with torch.no_grad():  # the reference side, as the official computes it
                ref_taps = nets.vgg_taps(to_style_size(ref_small))
            taps = nets.vgg_taps(to_style_size(img_small * hair))
            style = sum(((_gram(a) - _gram(b)) ** 2).mean() for a, b in zip(ref_taps, taps)) / 4 * batch
            return ce + 4e4 * style
    elif stage == "blend":
        with torch.no_grad():
            f_blend, _ = g(w_start, nets.noise(batch), end_layer=3)
        s_face, s_color = w_start, torch.randn_like(w_start) * 0.1
        u = torch.zeros_like(w_start).requires_grad_(True)
        params = [u]
        face_small, color_small = target_small, torch.rand_like(target_small) * 2 - 1
        face_mask, hair_mask = mask, 1 - mask

        def masked(x, y, m):
            d = nets.lpips_spatial(x, y)
            m = F.interpolate(m, size=d.shape[2:], mode="nearest")
            return ((d * m).sum((1, 2, 3)) / m.sum((1, 2, 3)).clamp_min(1)).sum()

        def loss_fn(u, noise):
            latent = s_face + u * (s_color - s_face)
            _, img = g(latent, noise, start_layer=4, layer_in=f_blend)
            img_small = TB.bicubic_downsample(img, size // small)
            return masked(img_small, face_small, face_mask) + masked(img_small, color_small, hair_mask)
    else:
        raise ValueError(f"unknown stage {stage!r}")

    fn = torch.compile(loss_fn) if compile else loss_fn
    opt = torch.optim.Adam(params, lr=0.01)

    def step():
        opt.zero_grad(set_to_none=True)
        fn(*params, nets.noise(batch)).backward()
        opt.step()
        if stage == "blend":
            with torch.no_grad():
                params[0].clamp_(0, 1)

    return step


def time_step(nets: Nets, stage: str, batch: int, *, steps: int, reps: int, compile: bool = False) -> dict:
    """Median ms per step over `reps` runs of `steps` steps, after a warm-up (which, with
    compile=True, includes torch.compile's compilation: reported as compile_s)."""
    import torch

    cuda = nets.device == "cuda"

    def sync():
        if cuda:
            torch.cuda.synchronize()

    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    step = make_step(nets, stage, batch, compile)
    t = time.perf_counter()
    step()
    step()
    sync()
    warm_s = time.perf_counter() - t
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        for _ in range(steps):
            step()
        sync()
        times.append((time.perf_counter() - t) / steps)
    ms = statistics.median(times) * 1e3
    return {"ms_per_step": ms, "image_steps_per_s": batch * 1e3 / ms, "batch": batch,
            "compile_s": warm_s if compile else None, "times_ms": [t * 1e3 for t in times],
            "peak_bytes": torch.cuda.max_memory_allocated() if cuda else None}


def official_steps() -> dict:
    """Optimisation steps of one official transfer (distinct face, shape and colour images),
    per stage: three images embedded (1100 W+ and 250 FS steps each), two pairs aligned (for
    each, two inpainting rounds of 80 steps and align step 1 of 140, align step 2 of 100),
    one blend of 400."""
    return {"W+": 3 * 1100, "FS": 3 * 250, "segmentation": 2 * (80 + 80 + 140), "align2": 2 * 100, "blend": 400}
