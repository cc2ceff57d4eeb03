"""RealNVP-style normalizing flows (Dinh et al., 2017), written once for the 2-D flow
prior of the VAE and for the image flow.

A flow maps data x to a base variable z through invertible layers. Each layer's
`forward(x)` goes data -> base and returns `(z, log|det dz/dx|)`; `inverse(z)` goes
back. By the change of variables,

    log p(x) = log N(z; 0, I) + sum_layers log|det dz/dx|.

The density is one `torch.distributions.Distribution`, `flow()` (a `FlowDistribution`, zuko's shape):
`Flow.log_prob`, `Flow.sample` and the training loss `Flow.loss` are its faces, and `data_to_base` /
`base_to_data` the transform it is built on.

Affine coupling with a binary mask m (1 = passed through, 0 = transformed):

    z = m * x + (1 - m) * (x * exp(s(m * x)) + t(m * x)),   log|det| = sum((1 - m) * s),

with s = tanh(.) bounded for stability and the last layer of s and t zero-initialised
(every coupling starts as the identity). The conditioners read only the passed-through
coordinates and predict only the transformed ones (a gather instead of multiplying by
the mask): the same function as a D -> hidden -> D network on `m * x` whose outputs are
multiplied by `1 - m`, at half the arithmetic for a checkerboard.

The image flow (`build_image_flow`) models dequantized images y in [0, 1]^D (D = C * H * W of the
dataset's registry shape): a logit pre-transform `y -> logit(alpha + (1 - 2 alpha) y)` (RealNVP, Sec. 4.1)
with its Jacobian, an actnorm layer that centres every pixel (initialised from data), then 20
couplings with alternating checkerboard masks on a Gaussian base.

Why the actnorm: after the logit every background pixel sits near logit(alpha) = -2.9 with the narrow
width of the dequantization noise. Maximum likelihood expands that narrow background, and without
centring every expansion by exp(s) also moves the pixel's offset by -2.9 (exp(s) - 1), which the
translation t must cancel exactly: an ill-conditioned pair in which one ordinary Adam step, or bf16
rounding of a large t, can throw a batch far into the Gaussian's tail. Centred pixels expand about zero
and need no compensating shift.

Why the gradient is clipped at about its typical norm (1 for this loss, in nats/dim): a pixel that
is background in nearly every image is expanded by maximum likelihood, so the rare image with ink
there lands far out in the Gaussian's tail and its batch's gradient is many times the typical one.
Adam's momentum then carries that one batch's direction for many steps. Adam's step does not depend
on the gradient's scale, so clipping at the typical norm changes nothing for ordinary batches and takes
the excess weight away from the rare ones. What was seen without either: benchmarks/README.md.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.distributions import Distribution, constraints

from .data import INFO, dequantized_bits_per_dim
from .data import bits_per_dim  # noqa: F401  (SPEC's gen_lib.flows.bits_per_dim: the one function, in data)
from .seeds import Linear
from .stats import mean_ci

_LOG_2PI = math.log(2 * math.pi)
MNIST_SHAPE = INFO["mnist"].shape  # the registry's default dataset: the image flow's shape where none is given


def _device_dtype(module: nn.Module) -> tuple[torch.device, torch.dtype]:
    """The device and dtype of a module's parameters (CPU float32 without any)."""
    p = next(module.parameters(), None)
    return (p.device, p.dtype) if p is not None else (torch.device("cpu"), torch.float32)


def _mlp(d_in: int, hidden: int, d_out: int) -> nn.Sequential:
    net = nn.Sequential(Linear(d_in, hidden), nn.ReLU(), Linear(hidden, d_out))  # nn.Linear (and stacked seeds)
    nn.init.zeros_(net[-1].weight)
    nn.init.zeros_(net[-1].bias)
    return net


class AffineCoupling(nn.Module):
    """Affine coupling layer on flat vectors (..., D) with a fixed binary `mask` (D,).

    z_b = x_b * exp(s(x_a)) + t(x_a), z_a = x_a, where a = {mask == 1} (passed through)
    and b = {mask == 0} (transformed); log|det dz/dx| = sum(s). s = tanh(.) is bounded.
    Scale and translation networks each have one hidden layer of `hidden` ReLU units.
    Reference: Dinh, Sohl-Dickstein, Bengio, "Density estimation using Real NVP", ICLR 2017.
    """

    def __init__(self, mask: torch.Tensor, hidden: int):
        super().__init__()
        mask = mask.flatten().float()
        if not ((mask == 0) | (mask == 1)).all() or mask.sum() in (0, mask.numel()):
            raise ValueError("mask must be binary with at least one 1 (passed through) and one 0 (transformed)")
        self.register_buffer("mask", mask)
        self.register_buffer("pass_idx", mask.nonzero().squeeze(1), persistent=False)
        self.register_buffer("change_idx", (mask == 0).nonzero().squeeze(1), persistent=False)
        d_pass, d_change = self.pass_idx.numel(), self.change_idx.numel()
        self.s_net = _mlp(d_pass, hidden, d_change)
        self.t_net = _mlp(d_pass, hidden, d_change)

    def _st(self, x_a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # at least fp32 out of the networks under bf16 autocast: log-determinants are summed in fp32
        dtype = torch.promote_types(x_a.dtype, torch.float32)
        s = torch.tanh(self.s_net(x_a)).to(dtype)  # (B, D_b)
        t = self.t_net(x_a).to(dtype)  # (B, D_b)
        return s, t

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Data -> base: (z, log|det dz/dx|) with shapes (B, D), (B,)."""
        s, t = self._st(x[..., self.pass_idx])
        z_b = x[..., self.change_idx] * torch.exp(s).to(x.dtype) + t.to(x.dtype)
        return x.index_copy(-1, self.change_idx, z_b), s.sum(-1).to(x.dtype)

    def inverse(self, z: torch.Tensor) -> torch.Tensor:
        """Base -> data."""
        s, t = self._st(z[..., self.pass_idx])  # z_a == x_a: the conditioner sees the same input
        x_b = (z[..., self.change_idx] - t.to(z.dtype)) * torch.exp(-s).to(z.dtype)
        return z.index_copy(-1, self.change_idx, x_b)


class LogitTransform(nn.Module):
    """y in [0, 1]^D -> u = alpha + (1 - 2 alpha) y -> logit(u), elementwise, no parameters.

    log|det| = sum_i [log(1 - 2 alpha) - log u_i - log(1 - u_i)]. Reference: RealNVP, Sec. 4.1.
    """

    def __init__(self, alpha: float = 0.05):
        super().__init__()
        if not 0.0 < alpha < 0.5:
            raise ValueError(f"alpha={alpha}: need 0 < alpha < 0.5")
        self.alpha = alpha

    def forward(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        u = self.alpha + (1.0 - 2.0 * self.alpha) * y  # (B, D) in [alpha, 1 - alpha]
        z = torch.log(u) - torch.log1p(-u)
        log_det = (math.log(1.0 - 2.0 * self.alpha) - torch.log(u) - torch.log1p(-u)).sum(-1)
        return z, log_det

    def inverse(self, z: torch.Tensor) -> torch.Tensor:
        return (torch.sigmoid(z) - self.alpha) / (1.0 - 2.0 * self.alpha)


class ActNorm(nn.Module):
    """Per-dimension affine map z = (x - loc) * exp(-log_scale), log|det| = -sum(log_scale) (Glow's actnorm).

    Starts as the identity; `initialize(x)` sets loc and log_scale from a batch (data-dependent
    initialisation; both stay learnable). Reference: Kingma & Dhariwal, "Glow", NeurIPS 2018, Sec. 3.1.
    """

    def __init__(self, dim: int):
        super().__init__()
        self.loc = nn.Parameter(torch.zeros(dim))
        self.log_scale = nn.Parameter(torch.zeros(dim))

    @torch.no_grad()
    def initialize(self, x: torch.Tensor, expand: bool = False) -> None:
        """Centre every dimension of the batch x (B, D) (loc = mean) and shrink those with std > 1 to unit std.

        With `expand=False` a dimension with std < 1 is not blown up to unit std: a pixel that is
        background in every image of the batch has a tiny std, and an image with ink there would
        land hundreds of standard deviations out (a loss spike). The couplings learn that expansion
        gradually instead.
        """
        x = x.double()
        self.loc.copy_(x.mean(0))
        log_std = torch.log(x.std(0).clamp_min(1e-12))
        self.log_scale.copy_(log_std if expand else log_std.clamp_min(0.0))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = (x - self.loc.to(x.dtype)) * torch.exp(-self.log_scale).to(x.dtype)
        return z, (-self.log_scale.sum(-1)).to(x.dtype).expand(x.shape[:-1])

    def inverse(self, z: torch.Tensor) -> torch.Tensor:
        return z * torch.exp(self.log_scale).to(z.dtype) + self.loc.to(z.dtype)


class Flow(nn.Module):
    """A stack of invertible layers on a standard-normal base, for events of `event_shape`.

    `flow()` is its density, a `FlowDistribution`: the one implementation of log p(x) and of sampling.
    `log_prob(x)` (which first checks x as data from outside), `sample(n)` and the training `loss(x)` are
    that distribution's faces; `data_to_base`/`base_to_data` are the transform it is built on. Layers act on
    flattened events (B, D); the API takes and returns (B, *event_shape).
    """

    def __init__(self, layers: list[nn.Module], event_shape: tuple[int, ...]):
        super().__init__()
        self.layers = nn.ModuleList(layers)
        self.event_shape = tuple(event_shape)
        self.dim = math.prod(self.event_shape)

    def forward(self) -> "FlowDistribution":
        """The flow's density as a `torch.distributions.Distribution` (log_prob, sample, rsample)."""
        return FlowDistribution(self)

    def check_input(self, x: torch.Tensor) -> None:
        """Raise a clear error for a wrong shape or non-finite values (subclasses add ranges)."""
        if x.dim() != 1 + len(self.event_shape) or tuple(x.shape[1:]) != self.event_shape:
            event = ", ".join(map(str, self.event_shape))
            raise ValueError(f"flow input has shape {tuple(x.shape)}; expected (N, {event})")
        if not torch.isfinite(x).all():
            raise ValueError("flow input has non-finite values (nan or inf)")

    def _batch_shape(self, x: torch.Tensor) -> torch.Size:
        return x.shape[: x.dim() - len(self.event_shape)]

    def base_log_prob(self, z: torch.Tensor) -> torch.Tensor:
        """log N(z; 0, I) per example, (B,) (or any batch shape: z (..., *event) gives (...))."""
        z = z.reshape(*self._batch_shape(z), -1)
        return -0.5 * (z.pow(2).sum(-1) + self.dim * _LOG_2PI)

    def data_to_base(self, x: torch.Tensor, check: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """x (B, *event) -> (z (B, *event), log|det dz/dx| (B,)). `check=False` skips `check_input` (a host
        synchronisation): for inputs computed by the caller, such as a VAE's latents under the flow prior; these
        may carry more batch dimensions, (..., *event) -> (..., *event), (...)."""
        h, total = x, torch.zeros(self._batch_shape(x), dtype=x.dtype, device=x.device)
        for h, log_det in self._walk(x, check):  # a flow without layers is the identity
            total = total + log_det
        return h.reshape(x.shape), total

    def base_to_data(self, z: torch.Tensor) -> torch.Tensor:
        """z (B, *event) -> x (B, *event)."""
        h = z.reshape(z.shape[0], self.dim)
        for layer in reversed(self.layers):
            h = layer.inverse(h)
        return h.reshape(z.shape[0], *self.event_shape)

    def trajectory(self, x: torch.Tensor) -> list[torch.Tensor]:
        """x and its image after every layer, each (B, *event): the walk from data to base."""
        return [x] + [h.reshape(x.shape) for h, _ in self._walk(x)]

    def _walk(self, x, check: bool = True):
        if check:
            self.check_input(x)
        h = x.reshape(*self._batch_shape(x), self.dim)  # (B, D), or (..., D) unchecked
        for layer in self.layers:
            h, log_det = layer(h)
            yield h, log_det

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """log p(x) per example (B,), every Jacobian included: `flow().log_prob` of x checked as data."""
        self.check_input(x)
        return self().log_prob(x)

    def loss(self, x: torch.Tensor) -> torch.Tensor:
        """Negative log-likelihood per dimension (nats) under `flow()`, the training objective."""
        return -self.log_prob(x).float().mean() / self.dim

    def sample(self, n: int, temperature: float = 1.0, generator: torch.Generator | None = None) -> torch.Tensor:
        """n samples (n, *event) of `flow()` at `temperature`: z ~ N(0, temperature^2 I) mapped to data space."""
        return self().rsample((n,), temperature=temperature, generator=generator)


class ImageFlow(Flow):
    """A `Flow` on images (B, C, H, W) with values in [0, 1] (dequantized pixels)."""

    def check_input(self, x: torch.Tensor) -> None:
        super().check_input(x)
        lo, hi = x.min().item(), x.max().item()
        if lo < 0.0 or hi > 1.0:
            raise ValueError(f"image flow input lies in [{lo:.4g}, {hi:.4g}]; expected images in [0, 1] "
                             "(dequantize 8-bit images with gen_lib.data.dequantize)")


class FlowDistribution(Distribution):
    """The density of a `Flow` (what `flow()` returns): log p(x) = log N(z; 0, I) + log|det dz/dx| with
    (z, log|det|) = `flow.data_to_base(x)`, and samples `flow.base_to_data(z)` of z ~ N(0, I), reparameterised.

    Any sample and batch shape (the layers act on the last axis). A density, not a data loader: no input
    checks (validate_args=False); `Flow.log_prob` checks data before it calls this.
    """

    arg_constraints: dict = {}
    support = constraints.real_vector
    has_rsample = True

    def __init__(self, flow: Flow):
        self.flow = flow
        super().__init__(batch_shape=torch.Size(), event_shape=torch.Size(flow.event_shape), validate_args=False)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        z, log_det = self.flow.data_to_base(value, check=False)
        return self.flow.base_log_prob(z) + log_det

    def rsample(self, sample_shape: torch.Size = torch.Size(), temperature: float = 1.0,
                generator: torch.Generator | None = None) -> torch.Tensor:
        """Samples (*sample_shape, *event): z ~ N(0, temperature^2 I) in the parameters' device and dtype."""
        n = math.prod(sample_shape)
        device, dtype = _device_dtype(self.flow)
        z = torch.randn((n, *self.event_shape), generator=generator, device=device, dtype=dtype) * temperature
        return self.flow.base_to_data(z).reshape(*sample_shape, *self.event_shape)


# ---------------------------------------------------------------- the image flow


def checkerboard_mask(height: int = MNIST_SHAPE[1], width: int = MNIST_SHAPE[2], parity: int = 0) -> torch.Tensor:
    """Flat (height * width,) mask: 1 where (row + col) % 2 == parity (passed through), else 0."""
    if parity not in (0, 1):
        raise ValueError(f"parity={parity!r}; choose 0 or 1")
    rows = torch.arange(height).unsqueeze(1)
    cols = torch.arange(width).unsqueeze(0)
    return ((rows + cols) % 2 == parity).float().flatten()  # (H * W,)


def build_image_flow(n_layers: int = 20, hidden: int = 256, logit_alpha: float | None = 0.05,
                     image_shape: tuple[int, int, int] = MNIST_SHAPE, actnorm: bool = True) -> ImageFlow:
    """The study's image flow: [logit pre-transform] + [actnorm] + `n_layers` affine couplings with
    checkerboard masks alternating layer to layer (parity 0, 1, 0, ...), on N(0, I).

    Models dequantized images y in [0, 1]^(C·H·W) of `image_shape` (a dataset's registry shape, MNIST's by
    default); `log_prob(y)` includes the logit's Jacobian.
    `base_to_data` inverts the logit onto (-alpha, 1 + alpha) / (1 - 2 alpha), a little wider
    than [0, 1]: clamp samples to [0, 1] for display and saving.
    `logit_alpha=None` drops the pre-transform (the base then models [0, 1] directly). The actnorm
    starts as the identity: `initialize_actnorm(flow, y)` centres it on data before training.
    """
    if n_layers < 2:
        raise ValueError(f"n_layers={n_layers}: need at least 2 so that every pixel is transformed")
    c, h, w = image_shape
    layers: list[nn.Module] = [LogitTransform(logit_alpha)] if logit_alpha is not None else []
    layers += [ActNorm(c * h * w)] if actnorm else []
    masks = [checkerboard_mask(h, w, k % 2).repeat(c) for k in range(n_layers)]  # (C·H·W,): the same in every channel
    layers += [AffineCoupling(mask, hidden) for mask in masks]
    return ImageFlow(layers, image_shape)


@torch.no_grad()
def initialize_actnorm(flow: Flow, y: torch.Tensor) -> None:
    """Data-dependent initialisation: pass the batch y (B, *event) through the flow and initialise each
    `ActNorm` on what reaches it (`ActNorm.initialize`)."""
    flow.check_input(y)
    h = y.reshape(y.shape[0], flow.dim).to(next(flow.parameters()).dtype)
    for layer in flow.layers:
        if isinstance(layer, ActNorm):
            layer.initialize(h)
        h, _ = layer(h)


@torch.no_grad()
def dataset_bits_per_dim(flow: Flow, images: torch.Tensor, seed: int = 0, batch_size: int = 500) -> torch.Tensor:
    """Per-image bits/dim (N,) of 8-bit `images` (N, *event) in [0, 1] under `flow` (`data.dequantized_bits_per_dim`:
    y dequantized with a fixed seed, so every call and every model scores the same y), in float32 without autocast."""
    device, dtype = _device_dtype(flow)

    def log_prob(y: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device.type, enabled=False):  # metrics in full precision, even inside autocast
            return flow.log_prob(y.to(device, dtype)).float()

    return dequantized_bits_per_dim(images, log_prob, seed, batch_size)


def mean_and_stderr(values: torch.Tensor) -> tuple[float, float]:
    """Mean and its standard error std / sqrt(n) over examples (`stats.mean_ci`'s, without the interval)."""
    ci = mean_ci(values)
    return ci["mean"], ci["se"]
