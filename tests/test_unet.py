"""Contract tests of the U-Net ε-network: shapes, gradients, padding, bad input."""

import re

import pytest
import torch

from gen_lib import unet
from gen_lib.study import config
from gen_lib.unet import UNet, timestep_embedding


@pytest.mark.parametrize("base_channels,n_res", [(8, 1), (16, 2)])
def test_shape_and_gradient_to_every_parameter(base_channels, n_res):
    torch.manual_seed(0)
    net = UNet(base_channels=base_channels, n_res=n_res).double()
    # the zero-initialised output conv would block gradients to everything before it on the first step
    torch.nn.init.normal_(net.conv_out.weight, std=0.1)
    x = torch.randn(3, 1, 28, 28, dtype=torch.float64)
    t = torch.tensor([0, 417, 999])
    out = net(x, t)
    assert out.shape == (3, 1, 28, 28) and out.dtype == torch.float64
    out.square().sum().backward()
    missing = [name for name, p in net.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing, f"no gradient for {missing}"


def test_output_depends_on_t_and_examples_are_independent():
    torch.manual_seed(0)
    net = UNet(base_channels=8).double().eval()
    torch.nn.init.normal_(net.conv_out.weight, std=0.1)
    x = torch.randn(2, 1, 28, 28, dtype=torch.float64)
    a = net(x, torch.tensor([10, 10]))
    b = net(x, torch.tensor([10, 900]))
    assert torch.allclose(a[0], b[0]) and not torch.allclose(a[1], b[1])  # GroupNorm: no batch coupling
    single = net(x[1:], torch.tensor([900]))
    assert torch.allclose(single[0], b[1])


def test_other_image_sizes_are_padded_and_cropped():
    net = UNet(base_channels=8)
    assert net(torch.randn(2, 1, 32, 32), torch.tensor([1, 2])).shape == (2, 1, 32, 32)
    assert net(torch.randn(2, 1, 20, 24), torch.tensor([1, 2])).shape == (2, 1, 20, 24)


def test_timestep_embedding():
    emb = timestep_embedding(torch.tensor([0, 1, 500]), 16)
    assert emb.shape == (3, 16)
    assert torch.allclose(emb[0], torch.cat([torch.zeros(8), torch.ones(8)]))
    assert torch.allclose(emb.square().reshape(3, 2, 8).sum(1), torch.ones(3, 8))  # sin² + cos² = 1


def _count_by_hand(c0, mults, n_res, c_in=1):
    """Parameters of the architecture the module docstring describes, by arithmetic (weights + biases)."""
    conv = lambda i, o, k: i * o * k * k + o  # noqa: E731
    linear = lambda i, o: i * o + o  # noqa: E731
    norm = lambda c: 2 * c  # noqa: E731  GroupNorm: scale and shift
    t_dim = 4 * c0

    def res(i, o):  # norm, 3x3 conv, time projection, norm, 3x3 conv, 1x1 skip where the width changes
        return norm(i) + conv(i, o, 3) + linear(t_dim, o) + norm(o) + conv(o, o, 3) + (conv(i, o, 1) if i != o else 0)

    total = linear(c0, t_dim) + linear(t_dim, t_dim) + conv(c_in, c0, 3)  # time MLP, conv_in
    widths, c = [c0 * m for m in mults], c0
    for w in widths:  # down: n_res blocks, then a stride-2 3x3 conv
        total += res(c, w) + (n_res - 1) * res(w, w) + conv(w, w, 3)
        c = w
    total += 2 * res(c, c) + norm(c) + conv(c, 3 * c, 1) + conv(c, c, 1)  # middle: two blocks, attention
    for w in reversed(widths):  # up: a 3x3 conv after the upsampling, n_res blocks reading the skips
        total += conv(c, c, 3) + res(c + w, w) + (n_res - 1) * res(2 * w, w)
        c = w
    return total + norm(c) + conv(c, c_in, 3)


@pytest.mark.parametrize("profile", config.PROFILES)
def test_parameter_counts_of_profiles(profile):
    cfg = config.resolve("ddpm", profile)
    mults = tuple(int(m) for m in cfg["channel_mults"].split(","))
    net = UNet(base_channels=cfg["base_channels"], channel_mults=mults, n_res=cfg["n_res"])
    assert sum(p.numel() for p in net.parameters()) == _count_by_hand(cfg["base_channels"], mults, cfg["n_res"])
    if profile == "paper":  # the size the module docstring states
        stated = float(re.search(r"\(([\d.]+) M parameters", unet.__doc__).group(1))
        assert round(_count_by_hand(cfg["base_channels"], mults, cfg["n_res"]) / 1e6, 1) == stated


def test_bad_input():
    net = UNet(base_channels=8)
    with pytest.raises(ValueError, match=r"x has shape \(2, 3, 28, 28\)"):
        net(torch.randn(2, 3, 28, 28), torch.tensor([1, 2]))
    with pytest.raises(ValueError, match="t has shape"):
        net(torch.randn(2, 1, 28, 28), torch.tensor([1.0, 2.0]))
    with pytest.raises(ValueError, match="t has shape"):
        net(torch.randn(2, 1, 28, 28), torch.tensor([1]))
    with pytest.raises(ValueError, match="4 entries"):
        UNet(channel_mults=(1, 2))


@pytest.mark.parametrize("profile", ["smoke", "default", "paper"])
def test_profiles_build(profile):
    from gen_lib.study import config, models

    ddpm = models.build("ddpm", config.resolve("ddpm", profile))  # sizes: no timing
    out = ddpm.network(torch.zeros(2, 1, 28, 28), torch.tensor([0, 999]))
    assert out.shape == (2, 1, 28, 28) and ddpm.T == 1000
