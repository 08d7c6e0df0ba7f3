"""A PyTorch reference of the BiSeNet face parser and of Barbershop's parser input handling,
written for these tests from SPEC.md section 3 (not copied from the official code).

Same state_dict names and shapes as Barbershop's seg.pth and zllrunning's 79999_iter.pth
(`cp.resnet.*`, `cp.arm16.*`, `ffm.*`, `conv_out.*`, ...), NCHW, eval-mode batch norm.
`calibrate_` gives random weights realistic batch-norm statistics by running random images
through the network in training mode, so that every layer sees unit-scale activations.
"""
import torch
import torch.nn.functional as F
from torch import nn

IMAGENET_MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
IMAGENET_STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


class ConvBNReLU(nn.Module):
    def __init__(self, n_in, n_out, k=3):
        super().__init__()
        self.conv = nn.Conv2d(n_in, n_out, k, padding=k // 2, bias=False)
        self.bn = nn.BatchNorm2d(n_out)

    def forward(self, x):
        return F.relu(self.bn(self.conv(x)))


class BasicBlock(nn.Module):
    def __init__(self, n_in, n_out, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(n_in, n_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(n_out)
        self.conv2 = nn.Conv2d(n_out, n_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(n_out)
        self.downsample = None
        if stride != 1 or n_in != n_out:
            self.downsample = nn.Sequential(nn.Conv2d(n_in, n_out, 1, stride, bias=False), nn.BatchNorm2d(n_out))

    def forward(self, x):
        r = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        return F.relu((x if self.downsample is None else self.downsample(x)) + r)


class Resnet18(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        widths = [(64, 64, 1), (64, 128, 2), (128, 256, 2), (256, 512, 2)]
        for i, (a, b, s) in enumerate(widths, 1):
            setattr(self, f"layer{i}", nn.Sequential(BasicBlock(a, b, s), BasicBlock(b, b, 1)))

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 3, 2, 1)
        x = self.layer1(x)
        f8 = self.layer2(x)
        f16 = self.layer3(f8)
        return f8, f16, self.layer4(f16)


class ARM(nn.Module):
    def __init__(self, n_in, n_out):
        super().__init__()
        self.conv = ConvBNReLU(n_in, n_out, 3)
        self.conv_atten = nn.Conv2d(n_out, n_out, 1, bias=False)
        self.bn_atten = nn.BatchNorm2d(n_out)

    def forward(self, x):
        feat = self.conv(x)
        return feat * torch.sigmoid(self.bn_atten(self.conv_atten(feat.mean((2, 3), keepdim=True))))


class ContextPath(nn.Module):
    def __init__(self):
        super().__init__()
        self.resnet = Resnet18()
        self.arm16 = ARM(256, 128)
        self.arm32 = ARM(512, 128)
        self.conv_head32 = ConvBNReLU(128, 128, 3)
        self.conv_head16 = ConvBNReLU(128, 128, 3)
        self.conv_avg = ConvBNReLU(512, 128, 1)

    def forward(self, x):
        f8, f16, f32 = self.resnet(x)
        avg = F.interpolate(self.conv_avg(f32.mean((2, 3), keepdim=True)), f32.shape[2:], mode="nearest")
        up32 = self.conv_head32(F.interpolate(self.arm32(f32) + avg, f16.shape[2:], mode="nearest"))
        up16 = self.conv_head16(F.interpolate(self.arm16(f16) + up32, f8.shape[2:], mode="nearest"))
        return f8, up16, up32


class FFM(nn.Module):
    def __init__(self, n_in, n_out):
        super().__init__()
        self.convblk = ConvBNReLU(n_in, n_out, 1)
        self.conv1 = nn.Conv2d(n_out, n_out // 4, 1, bias=False)
        self.conv2 = nn.Conv2d(n_out // 4, n_out, 1, bias=False)

    def forward(self, sp, cp):
        feat = self.convblk(torch.cat([sp, cp], 1))
        att = torch.sigmoid(self.conv2(F.relu(self.conv1(feat.mean((2, 3), keepdim=True)))))
        return feat * att + feat


class Head(nn.Module):
    def __init__(self, n_in, mid, n_classes):
        super().__init__()
        self.conv = ConvBNReLU(n_in, mid, 3)
        self.conv_out = nn.Conv2d(mid, n_classes, 1, bias=False)

    def forward(self, x):
        return self.conv_out(self.conv(x))


class BiSeNet(nn.Module):
    def __init__(self, n_classes):
        super().__init__()
        self.cp = ContextPath()
        self.ffm = FFM(256, 256)
        self.conv_out = Head(256, 256, n_classes)
        self.conv_out16 = Head(128, 64, n_classes)
        self.conv_out32 = Head(128, 64, n_classes)

    def forward(self, x):
        size = x.shape[2:]
        f8, cp8, cp16 = self.cp(x)
        outs = (self.conv_out(self.ffm(f8, cp8)), self.conv_out16(cp8), self.conv_out32(cp16))
        return tuple(F.interpolate(o, size, mode="bilinear", align_corners=True) for o in outs)


def calibrate_(net, seed=0, size=128, batches=2, batch=4):
    """Random conv weights (He normal) and batch-norm statistics gathered from random images
    in training mode (cumulative average), then random affine BN parameters; eval mode."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.Conv2d):
                fan_in = m.weight[0].numel()
                m.weight.copy_(torch.randn(m.weight.shape, generator=gen) * (2.0 / fan_in) ** 0.5)
            elif isinstance(m, nn.BatchNorm2d):
                m.weight.copy_(torch.rand(m.weight.shape, generator=gen) + 0.5)
                m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=gen))
                m.reset_running_stats()
                m.momentum = None
        net.train()
        for _ in range(batches):
            net(torch.randn(batch, 3, size, size, generator=gen))
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.momentum = 0.1
    return net.eval()


# ----------------------------------------------------------------------------- input handling
def bicubic_taps(factor, a=-0.5):
    """PULSE's kernel: k((i - floor(2 f) + 0.5) / f), i < 4 f, normalised (float32 torch)."""
    size = 4 * factor
    x = ((torch.arange(size, dtype=torch.float32) - size // 2 + 0.5) / factor).abs()
    k = torch.where(x <= 1, (a + 2) * x ** 3 - (a + 3) * x ** 2 + 1,
                    torch.where(x < 2, a * x ** 3 - 5 * a * x ** 2 + 8 * a * x - 4 * a, torch.zeros_like(x)))
    return k / k.sum()


def bicubic_downsample(x, factor):
    """BicubicDownSample(factor) on NCHW: reflect pad, 1-D conv stride `factor`, height first."""
    c = x.shape[1]
    k = bicubic_taps(factor).to(x.device)
    pad = 3 * factor
    before, after = pad // 2, pad - pad // 2
    x = F.conv2d(F.pad(x, (0, 0, before, after), mode="reflect"), k.view(1, 1, -1, 1).repeat(c, 1, 1, 1),
                 stride=(factor, 1), groups=c)
    return F.conv2d(F.pad(x, (before, after, 0, 0), mode="reflect"), k.view(1, 1, 1, -1).repeat(c, 1, 1, 1),
                    stride=(1, factor), groups=c)


def segment(net, image01, parse_size, clamp):
    """Barbershop's parser call: downsample, clamp (real images only), normalise, main head."""
    x = bicubic_downsample(image01, image01.shape[2] // parse_size)
    if clamp:
        x = x.clamp(0, 1)
    return net((x - IMAGENET_MEAN) / IMAGENET_STD)[0]
