"""Full-size parity check (needs a big machine; not part of the CPU test suite).

The official FFHQ architecture (1024 px, channel multiplier 2) with random weights at the
official scale: the PyTorch reference (tests/torch_stylegan2.py) saved as a checkpoint,
converted by the real converter, and compared in strict float32 (TF32 off on both sides):
W+ render, F after block 3, the FS render from block 4, and the gradient to W+.
Writes benchmarks/results/check_1024px_<date>_<machine>.json (result_names.py).
"""
import json
import sys
import tempfile
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests"), str(ROOT / "benchmarks")]
import torch_stylegan2 as T  # noqa: E402
from convert import stylegan2 as conv  # noqa: E402
import result_names  # noqa: E402


def rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / np.abs(b).max())


def nhwc(t):
    return t.detach().cpu().numpy().transpose(0, 2, 3, 1)


def main(size=1024):
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    g = T.realistic_init_(T.Generator(size, 512, 8, channel_multiplier=2)).eval()
    with tempfile.TemporaryDirectory() as tmp:
        torch.save(T.checkpoint(g), Path(tmp) / "ffhq.pt")
        model, _ = conv.convert(Path(tmp) / "ffhq.pt")
    model = model.replace(config=model.config.replace(precision="highest"))
    g = g.to(dev).requires_grad_(False)
    torch.manual_seed(0)
    n = g.n_latent
    w = g.style(torch.randn(2, 512, device=dev))[:, None].repeat(1, n, 1) + 0.2 * torch.randn(2, n, 512, device=dev)
    noise = [torch.randn(2, 1, *n.shape[2:], device=dev) for n in g.const_noise()]
    target = torch.randn(2, 3, size, size, device=dev)
    wt = w.clone().requires_grad_(True)
    _, img = g(wt, noise)
    ((img - target) ** 2).mean().backward()
    with torch.no_grad():
        f, _ = g(w, noise, end_layer=3)
        _, fs = g(w, noise, start_layer=4, layer_in=f)
    wj, nj, tj = jnp.asarray(w.cpu().numpy()), [jnp.asarray(nhwc(n)) for n in noise], jnp.asarray(nhwc(target))
    render = jax.jit(lambda m, w, n: m.render(w, noise=n))
    grad = jax.jit(jax.grad(lambda w, m, n, t: jnp.mean((m.render(w, noise=n) - t) ** 2)))
    feats = jax.jit(lambda m, w, n: m.features(w, block=3, noise=n)[0])
    resume = jax.jit(lambda m, f, w, n: m.render_from_features(f, w, block=3, noise=n))
    fj = feats(model, wj, nj)
    result = {"size": size, "device": str(jax.devices()[0]), "torch_device": dev,
              "render": rel(render(model, wj, nj), nhwc(img)),
              "features_block3": rel(fj, nhwc(f)),
              "fs_render": rel(resume(model, jnp.asarray(nhwc(f)), wj, nj), nhwc(fs)),
              "grad_w_plus": rel(grad(wj, model, nj, tj), wt.grad.cpu().numpy())}
    print(json.dumps(result, indent=1))
    out = ROOT / "benchmarks" / "results" / f"{result_names.stem('check', f'{size}px')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 1024)
