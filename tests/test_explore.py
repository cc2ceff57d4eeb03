"""The explorers of notebook 05_explore, driven through their Python API (what a widget's slider sets),
and the loaders (`gen_lib.study.trained`) that find the models notebooks 01-03 cached."""

from pathlib import Path

import pytest
import torch
from torch import nn

from gen_lib.study import config, recipes, trained
from gen_lib import data, flows, priors, vae
from gen_lib.report import explore
from gen_lib.diffusion import DDPM

pytest.importorskip("ipywidgets")
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def _close_figures():
    import matplotlib.pyplot as plt

    yield
    plt.close("all")


def _binary_images(n=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(n, 1, 28, 28, generator=g) > 0.7).float(), torch.randint(0, 10, (n,), generator=g)


def test_latent_explorer_follows_its_sliders():
    x, y = _binary_images()
    vaes = {name: vae.build_vae(name).eval() for name in ("gaussian", "mog")}
    ex = explore.LatentExplorer(vaes, x, y, n_neighbours=3, grid=16, n_scatter=32)
    image, text = ex.image.value, ex.readout.value
    assert image[:8] == b"\x89PNG\r\n\x1a\n" and "Gaussian" in text

    ex.z1.value = ex.z1.min  # what dragging the slider does
    assert ex.image.value != image and ex.readout.value != text
    assert f"{ex.z1.min:.2f}" in ex.readout.value

    image = ex.image.value
    ex.prior.value = "mog"  # the sliders take the new prior's box, the view redraws once
    (lo1, lo2), (hi1, hi2) = ex.box["mog"]
    assert (ex.z1.min, ex.z1.max, ex.z2.min, ex.z2.max) == pytest.approx((lo1, hi1, lo2, hi2))
    assert lo1 <= ex.z1.value <= hi1 and "MoG" in ex.readout.value and ex.image.value != image


def test_latent_view_is_the_prior_density_and_the_nearest_encodings():
    x, y = _binary_images()
    model = vae.build_vae("flow").eval()
    ex = explore.LatentExplorer({"flow": model}, x, y, n_neighbours=4, grid=8, n_scatter=16)
    z = (0.3, -0.2)
    v = ex.view("flow", z)
    zt = torch.tensor([z])
    with torch.no_grad():
        assert v["log_pz"] == pytest.approx(model.prior().log_prob(zt).item(), rel=1e-6)
        assert torch.equal(v["image"], model.decode(zt)[0])
    mu, _ = model.encode(x)
    brute = (mu - zt).norm(dim=1).argsort()[:4]
    assert torch.equal(v["neighbours"], brute)


class _TinyEps(nn.Module):
    """A stand-in ε-network in float64: one conv, scaled by the step."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 1, 3, padding=1, dtype=torch.float64)

    def forward(self, x, t):
        return self.conv(x) * (1 + t.to(x.dtype).reshape(-1, 1, 1, 1) / 100)


def test_recorded_trajectory_is_the_samplers_own():
    torch.manual_seed(0)
    ddpm = DDPM(_TinyEps(), T=50)
    rec = explore.denoising_trajectory(ddpm, n=3, steps=10, method="ddim", seed=7)
    plain = ddpm.sample(3, steps=10, method="ddim", generator=torch.Generator().manual_seed(7))
    assert torch.equal(rec["x"][-1], plain)  # recording changes nothing
    assert rec["x"].shape == rec["x0_hat"].shape == (11, 3, 1, 28, 28)
    assert rec["level"].tolist() == [50, 45, 40, 35, 30, 25, 20, 15, 10, 5, 0]
    # every DDIM step is x_prev = √ᾱ_prev x̂_0 + √(1 − ᾱ_prev) ε̂ with ε̂ consistent with the recorded x̂_0
    abar = ddpm.alphas_cumprod
    for i in range(10):
        t = rec["level"][i] - 1
        a, a_prev = abar[t], (abar[rec["level"][i + 1] - 1] if i < 9 else torch.tensor(1.0, dtype=torch.float64))
        eps = (rec["x"][i] - a.sqrt() * rec["x0_hat"][i]) / (1 - a).sqrt()
        expected = a_prev.sqrt() * rec["x0_hat"][i] + (1 - a_prev).sqrt() * eps
        torch.testing.assert_close(rec["x"][i + 1], expected, rtol=1e-9, atol=1e-9)  # float64 throughout


def test_diffusion_explorer_slider_moves_both_samplers():
    torch.manual_seed(0)
    ddpm = DDPM(_TinyEps(), T=40)
    ex = explore.DiffusionExplorer(ddpm, n=2, ddim_steps=4, ancestral_steps=None)
    assert list(ex.runs) == ["ancestral, 40 steps", "DDIM, 4 steps"]
    torch.testing.assert_close(ex.runs["ancestral, 40 steps"]["x"][0], ex.runs["DDIM, 4 steps"]["x"][0])  # same x_T
    image = ex.image.value
    ex.t.value = 0
    assert ex.image.value != image and "step 40 of 40" in ex.readout.value and "step 4 of 4" in ex.readout.value
    start = ex.at("DDIM, 4 steps", 40)
    assert start["step"] == 0 and start["level"] == 40
    mid = ex.at("DDIM, 4 steps", 25)  # the last DDIM state still at or above t = 25: level 30
    assert mid["level"] == 30 and mid["step"] == 1
    ex.play.value = 10  # the play button walks t from T down
    assert ex.t.value == 30


def test_flow_explorer_temperature_and_walk():
    torch.manual_seed(0)
    flow = flows.build_image_flow(n_layers=2, hidden=8).eval()
    for p in flow.parameters():  # leave the identity start: make the couplings act
        nn.init.normal_(p, std=0.05)
    x = torch.rand(4, 1, 28, 28)
    ex = explore.FlowExplorer(flow, x, n_samples=4, n_walk=2)
    assert ex.names == ["data y", "after logit", "after actnorm", "after coupling 1", "after coupling 2"]
    image = ex.image.value
    ex.temperature.value = 1.0
    assert ex.image.value != image and "temperature 1.00" in ex.readout.value
    ex.layer.value = 0
    assert "data y" in ex.readout.value
    with torch.no_grad():
        mode = flow.base_to_data(torch.zeros(1, 1, 28, 28)).clamp(0, 1)
        torch.testing.assert_close(ex.samples(0.0), mode.expand(4, -1, -1, -1))  # τ = 0: every sample is the mode
        y = ex.walk[0]
        torch.testing.assert_close(ex.walk[-1], flow.data_to_base(y)[0])  # the walk ends at the base


def test_static_figures_draw():
    x, y = _binary_images(32)
    lat = explore.LatentExplorer({"gaussian": vae.build_vae("gaussian").eval()}, x, y, grid=8, n_scatter=16)
    assert len(lat.static_figure(n=3).axes) == 4
    dif = explore.DiffusionExplorer(DDPM(_TinyEps(), T=20), n=2, ddim_steps=5)
    assert len(dif.static_figure(n_levels=4).axes) == 16


def test_missing_cache_names_the_notebook_to_run(tmp_build):
    for load, notebook in ((trained.load_vaes, "01_priors"), (trained.load_flow, "02_flow"),
                           (trained.load_ddpm, "03_ddpm")):
        with pytest.raises(FileNotFoundError, match=f"run notebook {notebook} first"):
            load("smoke")
    with pytest.raises(ValueError, match="seeds 0..1"):
        trained.load_vaes("smoke", seed=5)


@pytest.mark.slow
def test_loaders_find_what_the_notebooks_train(tmp_build):
    """Train each model with the recipe its notebook calls (smoke configuration, a few images) and load it back."""
    x = data.binarize(torch.rand(16, 1, 28, 28))
    cfg = config.resolve("priors", "smoke")
    for name in priors.names():  # 01_priors, seed 0
        model = recipes.train_vae(cfg, x, prior=name, seed=0, device="cpu", progress=False).model
    loaded = trained.load_vaes("smoke")
    assert list(loaded) == list(priors.names())
    torch.testing.assert_close(loaded[priors.names()[-1]].state_dict(), model.cpu().state_dict())

    images = torch.rand(8, 1, 28, 28)
    flow = recipes.train_flow(config.resolve("flow", "smoke"), images, device="cpu", progress=False).model  # 02_flow
    torch.testing.assert_close(trained.load_flow("smoke").state_dict(), flow.float().state_dict())

    run = recipes.train_ddpm(config.resolve("ddpm", "smoke"), images, device="cpu", progress=False)  # 03_ddpm
    torch.testing.assert_close(trained.load_ddpm("smoke").state_dict(), run.result.ema.state_dict())  # the EMA
    # the lookups find the run that training wrote (its precision settled and cached by training)
    assert trained.run_folder("ddpm", config.resolve("ddpm", "smoke")) == run.folder
    assert trained.history("ddpm", config.resolve("ddpm", "smoke")) == run.history
