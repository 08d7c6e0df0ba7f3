"""A PyTorch reference of rosinality's StyleGAN2 generator, written for these tests.

Same state_dict names and shapes as the official checkpoints (SPEC.md section 2), and the
official algorithm: per-sample modulated weights, grouped convolution, conv_transpose2d +
blur for upsampling, upfirdn2d written out directly (zero insertion, padding, a true 2-D
convolution). Independent of the Flax code, which modulates the activations instead and
blurs with separable shifted adds. Plus Barbershop's partial forward (start/end layer,
layer_in, skip). `channel_max` lets tests shrink the network; 512 is the official value.
"""
import math

import torch
import torch.nn.functional as F
from torch import nn


def make_kernel(k):
    k = torch.tensor(k, dtype=torch.float32)
    k = k[None, :] * k[:, None]
    return k / k.sum()


def upfirdn2d(x, kernel, up=1, down=1, pad=(0, 0)):
    """NCHW; zero-insert by `up`, pad, true convolution with `kernel`, stride `down`."""
    b, c, h, w = x.shape
    if up > 1:
        x = x.reshape(b, c, h, 1, w, 1)
        x = F.pad(x, (0, up - 1, 0, 0, 0, up - 1))
        x = x.reshape(b, c, h * up, w * up)
    x = F.pad(x, (pad[0], pad[1], pad[0], pad[1]))
    weight = torch.flip(kernel, [0, 1])[None, None].repeat(c, 1, 1, 1)
    x = F.conv2d(x, weight, groups=c)
    return x[:, :, ::down, ::down]


class PixelNorm(nn.Module):
    def forward(self, x):
        return x * torch.rsqrt(torch.mean(x ** 2, dim=1, keepdim=True) + 1e-8)


def fused_leaky_relu(x, bias):
    shape = [1, -1] + [1] * (x.ndim - 2)
    return F.leaky_relu(x + bias.view(shape), 0.2) * math.sqrt(2)


class EqualLinear(nn.Module):
    def __init__(self, n_in, n_out, bias_init=0.0, lr_mul=1.0, activation=False):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(n_out, n_in) / lr_mul)
        self.bias = nn.Parameter(torch.full((n_out,), float(bias_init)))
        self.scale = lr_mul / math.sqrt(n_in)
        self.lr_mul = lr_mul
        self.activation = activation

    def forward(self, x):
        if self.activation:
            return fused_leaky_relu(F.linear(x, self.weight * self.scale), self.bias * self.lr_mul)
        return F.linear(x, self.weight * self.scale, self.bias * self.lr_mul)


class Blur(nn.Module):
    def __init__(self, pad, gain):
        super().__init__()
        self.register_buffer("kernel", make_kernel([1, 3, 3, 1]) * gain)
        self.pad = pad

    def forward(self, x):
        return upfirdn2d(x, self.kernel, pad=self.pad)


class Upsample(nn.Module):
    def __init__(self):
        super().__init__()
        self.register_buffer("kernel", make_kernel([1, 3, 3, 1]) * 4)

    def forward(self, x):
        return upfirdn2d(x, self.kernel, up=2, pad=(2, 1))


class ModulatedConv2d(nn.Module):
    def __init__(self, n_in, n_out, k, style_dim, demodulate=True, upsample=False):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(1, n_out, n_in, k, k))
        self.modulation = EqualLinear(style_dim, n_in, bias_init=1.0)
        self.scale = 1 / math.sqrt(n_in * k * k)
        self.demodulate, self.upsample, self.k = demodulate, upsample, k
        self.n_in, self.n_out = n_in, n_out
        if upsample:
            self.blur = Blur(pad=(1, 1), gain=4)

    def forward(self, x, style):
        b, _, h, w = x.shape
        s = self.modulation(style).view(b, 1, self.n_in, 1, 1)
        weight = self.scale * self.weight * s
        if self.demodulate:
            weight = weight * torch.rsqrt(weight.pow(2).sum([2, 3, 4]) + 1e-8).view(b, self.n_out, 1, 1, 1)
        x = x.reshape(1, b * self.n_in, h, w)
        if self.upsample:
            weight = weight.transpose(1, 2).reshape(b * self.n_in, self.n_out, self.k, self.k)
            out = F.conv_transpose2d(x, weight, stride=2, padding=0, groups=b)
            out = self.blur(out.view(b, self.n_out, *out.shape[2:]))
        else:
            weight = weight.reshape(b * self.n_out, self.n_in, self.k, self.k)
            out = F.conv2d(x, weight, padding=self.k // 2, groups=b)
            out = out.view(b, self.n_out, *out.shape[2:])
        return out


class NoiseInjection(nn.Module):
    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1))

    def forward(self, x, noise):
        return x if noise is None else x + self.weight * noise


class FusedLeakyReLU(nn.Module):
    def __init__(self, channels):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x):
        return fused_leaky_relu(x, self.bias)


class StyledConv(nn.Module):
    def __init__(self, n_in, n_out, style_dim, upsample=False):
        super().__init__()
        self.conv = ModulatedConv2d(n_in, n_out, 3, style_dim, upsample=upsample)
        self.noise = NoiseInjection()
        self.activate = FusedLeakyReLU(n_out)

    def forward(self, x, style, noise):
        return self.activate(self.noise(self.conv(x, style), noise))


class ToRGB(nn.Module):
    def __init__(self, n_in, style_dim, upsample=True):
        super().__init__()
        if upsample:
            self.upsample = Upsample()
        self.conv = ModulatedConv2d(n_in, 3, 1, style_dim, demodulate=False)
        self.bias = nn.Parameter(torch.zeros(1, 3, 1, 1))

    def forward(self, x, style, skip=None):
        out = self.conv(x, style) + self.bias
        return out if skip is None else out + self.upsample(skip)


class ConstantInput(nn.Module):
    def __init__(self, channels):
        super().__init__()
        self.input = nn.Parameter(torch.randn(1, channels, 4, 4))

    def forward(self, batch):
        return self.input.repeat(batch, 1, 1, 1)


class Generator(nn.Module):
    def __init__(self, size, style_dim=512, n_mlp=8, channel_multiplier=2, channel_max=512, lr_mlp=0.01):
        super().__init__()
        self.size, self.style_dim = size, style_dim
        self.style = nn.Sequential(PixelNorm(), *[
            EqualLinear(style_dim, style_dim, lr_mul=lr_mlp, activation=True) for _ in range(n_mlp)])
        ch = {r: min(channel_max, 16384 * channel_multiplier // r) for r in [2 ** i for i in range(2, 11)]}
        self.input = ConstantInput(ch[4])
        self.conv1 = StyledConv(ch[4], ch[4], style_dim)
        self.to_rgb1 = ToRGB(ch[4], style_dim, upsample=False)
        self.log_size = int(math.log2(size))
        self.num_layers = 2 * self.log_size - 3
        self.n_latent = 2 * self.log_size - 2
        self.convs, self.to_rgbs, self.noises = nn.ModuleList(), nn.ModuleList(), nn.Module()
        for i in range(self.num_layers):
            r = 2 ** ((i + 5) // 2)
            self.noises.register_buffer(f"noise_{i}", torch.randn(1, 1, r, r))
        n_in = ch[4]
        for i in range(3, self.log_size + 1):
            n_out = ch[2 ** i]
            self.convs.append(StyledConv(n_in, n_out, style_dim, upsample=True))
            self.convs.append(StyledConv(n_out, n_out, style_dim))
            self.to_rgbs.append(ToRGB(n_out, style_dim))
            n_in = n_out

    def const_noise(self):
        return [getattr(self.noises, f"noise_{i}") for i in range(self.num_layers)]

    def forward(self, latent, noise, start_layer=0, end_layer=8, layer_in=None, skip=None):
        """latent: W+ (B, n_latent, style_dim); Barbershop's partial-run semantics."""
        out = None
        if start_layer == 0:
            out = self.conv1(self.input(latent.shape[0]), latent[:, 0], noise[0])
            skip = self.to_rgb1(out, latent[:, 1])
        if end_layer == 0:
            return out, skip
        i = 1
        for block, (c1, c2, rgb) in enumerate(zip(self.convs[::2], self.convs[1::2], self.to_rgbs), start=1):
            if block > end_layer:
                return out, skip
            if block >= start_layer:
                x = layer_in if block == start_layer else out
                out = c2(c1(x, latent[:, i], noise[i]), latent[:, i + 1], noise[i + 1])
                skip = rgb(out, latent[:, i + 2], skip)
            i += 2
        return out, skip


def realistic_init_(g, seed=0):
    """Random weights at the official scale; biases and noise strengths (zero at init) set
    to N(0, 0.1) so that every path counts."""
    torch.manual_seed(seed)
    for name, module in g.named_modules():
        for pname, p in module.named_parameters(recurse=False):
            if isinstance(module, (NoiseInjection, FusedLeakyReLU)) or (isinstance(module, ToRGB) and pname == "bias"):
                with torch.no_grad():
                    p.normal_(0, 0.1)
    return g


def checkpoint(g, n_avg=2048, seed=1, latent_avg=True):
    """The dict rosinality's convert_weight.py saves: {'g_ema', 'latent_avg'}."""
    ckpt = {"g_ema": g.state_dict()}
    if latent_avg:
        torch.manual_seed(seed)
        with torch.no_grad():
            ckpt["latent_avg"] = g.style(torch.randn(n_avg, g.style_dim)).mean(0)
    return ckpt
