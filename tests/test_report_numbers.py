"""Each report section's numbers (gen_lib.report.numbers) from small synthetic results: the macro names written,
and their values computed as the notebooks did; the tables' files; Figure 1's layout and box."""

from types import SimpleNamespace

import pytest
import torch
from _sentences import fid_row
from torch import nn

from gen_lib import priors as prior_registry
from gen_lib.report import fmt, likelihood, numbers, plots, quality
from gen_lib.study import config


@pytest.fixture(autouse=True)
def report_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("GEN_LIB_REPORT", str(tmp_path))
    return tmp_path


def _written(report_dir, name):
    return (report_dir / "tables" / f"macros_{name}.tex").read_text()


def _run(history, precision="fp32", **model):
    return SimpleNamespace(model=SimpleNamespace(**model) if model else None, history=history,
                           config={"precision": precision}, result=SimpleNamespace(seconds=60.0, history=history))


# ---------------------------------------------------------------- Part 1


def _priors_results():
    """Two priors x two seeds: the MoG's ELBO 1 nat above the Gaussian's, IWAE 0.5 above the ELBO, log p(x)
    0.25 above the IWAE; two epochs of test ELBO per seed."""
    cfg = config.resolve("priors", "smoke", _plan=False, priors="gaussian,mog")
    n_quad = cfg["quadrature_subset"]
    n_test, metrics, runs = 2 * n_quad, {}, {}
    for n, shift in (("gaussian", 0.0), ("mog", 1.0)):
        for s in (0, 1):
            elbo = torch.full((n_test,), -100.0 + shift + 0.2 * s)
            metrics[n, s] = {"elbo": elbo, "iwae": elbo + 0.5, "log_px": (elbo[:n_quad] + 0.75).double()}
            kl = "analytic" if n == "gaussian" else "mc"
            runs[n, s] = _run([{"test_elbo": -101.0 + s}, {"test_elbo": -100.0 + shift + s}], kl_method=lambda k=kl: k)
    sweep = {"gaussian": {1: -99.8, 10: -99.7, 50: -99.6}, "mog": {1: -98.8, 10: -98.7, 50: -98.6}}
    conv = {n: {8: torch.tensor([1.0, 2.0]), 32: torch.tensor([1.1, 2.0]), 128: torch.tensor([1.0, 2.0])}
            for n in sweep}
    return cfg, runs, metrics, sweep, conv


def test_priors_writes_every_number_of_part_1(report_dir):
    cfg, runs, metrics, sweep, conv = _priors_results()
    m = numbers.priors(cfg, runs, metrics, sweep, conv, brute="a sentence", n_train=2048, total_seconds=600,
                       eval_seconds=120)
    mog, gauss = prior_registry.label("mog", cfg), prior_registry.label("gaussian", cfg)
    assert m["priors.count"] == "2" and m["priors.base"] == gauss and m["priors.labels"] == f"{gauss} and {mog}"
    assert m["priors.gaussian.elbo"] == fmt(-99.9) and m["priors.mog.elbo"] == fmt(-98.9)  # mean over seeds
    assert m["priors.base.elbo"] == m["priors.gaussian.elbo"] and "priors.base.kmax" in m
    assert m["priors.mog.iwaeelbo"] == "0.50" and m["priors.mog.gap"] == "0.25" and m["priors.gapmean"] == "0.25"
    assert m["priors.delbo.list"] == f"1.00 for {mog}"
    assert m["priors.iwaeelbo.list"] == f"0.50 for {gauss} and 0.50 for {mog}"
    assert m["priors.mog.kone"] == fmt(-98.8) and m["priors.mog.kmax"] == fmt(-98.6) and m["priors.kmax"] == "50"
    assert m["priors.kl.analytic"] == gauss and m["priors.kl.mc"] == mog and m["priors.ncompare"] == "2"
    assert m["priors.mog.lastgain"] == "2.00"  # from -101 (+s) to -99 (+s)
    assert m["priors.gridchange"] == "1.0e-01"  # the smoke grid is 32: its largest change to the 128 grid
    assert m["priors.minutes"] == "10.0" and m["priors.trainminutes"] == "4.0" and m["priors.evalminutes"] == "2.0"
    assert m["priors.ntest"] == str(2 * cfg["quadrature_subset"]) and m["priors.ntrain"] == "2,048"
    assert m["priors.brute"] == "a sentence"
    assert m["priors.frac-above"] == "0.0" and m["priors.origgap"] != "n/a"  # the Gaussian and the MoG are quoted
    written = _written(report_dir, "priors")
    assert all(f"\\csname val@{key}\\endcsname" in written for key in m)


def test_priors_tables_are_written_with_one_row_per_prior(report_dir):
    cfg, runs, metrics, sweep, conv = _priors_results()
    per_seed = numbers.priors_per_seed(metrics, cfg["quadrature_subset"])
    assert len(per_seed) == 4 and per_seed.iwae_sub.tolist() == pytest.approx((per_seed.elbo + 0.5).tolist())
    table = numbers.priors_table1(per_seed, cfg, n_test=8)
    assert list(table["p ELBO"])[0] == "--" and table["ELBO"].iloc[1] == "$-98.90 \\pm 0.14$"
    assert "profile \\texttt{smoke}" in (report_dir / "tables" / "priors_table1.tex").read_text()
    assert numbers.priors_original_table(per_seed, cfg)["ours IWAE - ELBO"].tolist() == ["$0.50$", "$0.50$"]
    assert numbers.priors_k_table(sweep, metrics, cfg)["K=50"].tolist() == ["$-99.60$", "$-98.60$"]
    ct = numbers.priors_quadrature_table(conv, cfg, n_images=2)
    assert list(ct.columns) == ["n=8", "n=32"] and ct["n=32"].tolist() == ["1.0e-01", "1.0e-01"]
    for name in ("priors_table1", "priors_original", "priors_iwae_k", "priors_quad_convergence"):
        assert (report_dir / "tables" / f"{name}.tex").exists()


# ---------------------------------------------------------------- Part 2: flow and DDPM


def test_flow_writes_its_numbers(report_dir):
    cfg = config.resolve("flow", "smoke", _plan=False)
    history = [{"seconds": 60.0}, {"seconds": 150.0}]
    run = SimpleNamespace(model=nn.Linear(10, 10), result=SimpleNamespace(history=history),
                          config={"precision": "bf16_autocast"})
    test, train, init = torch.full((4,), 1.5), torch.full((4,), 1.25), torch.full((4,), 8.0)
    m = numbers.flow(cfg, run, test, train, init, n_train=1000, n_eval=200, n_samples=256, sample_seconds=0.512,
                     clamped=0.0123, recon_err=1.79e-7)
    assert m["flow.bpd"] == "1.500" and m["flow.train-bpd"] == "1.250" and m["flow.gap"] == "0.250"
    assert m["flow.init-bpd"] == "8.000" and m["flow.n-test"] == "4" and m["flow.n-train"] == "1,000"
    assert m["flow.epochs"] == "2" and m["flow.train-minutes"] == "2.5" and m["flow.sample-ms"] == "2.00"
    assert m["flow.clamped"] == "1.23" and m["flow.recon-err"] == "$1.8\\times 10^{-7}$"
    assert m["flow.precision"] == "bf16\\_autocast" and m["flow.params"] == "0.0"
    assert m["flow.epochs-paper"] == str(config.resolve("flow", "paper", _plan=False)["epochs"])
    assert "val@flow.recon-err" in _written(report_dir, "flow")
    table = numbers.flow_table({"test": test, "train": train}, "smoke")
    assert table["bits/dim"].tolist() == ["1.500", "1.250"] and table["images"].tolist() == ["4", "4"]


def _row(fid, low, high):  # with the replicates of the paired test (tests/_sentences.py), a seed per row
    return fid_row(fid, low, high, seed=int(100 * fid), kid=0.01, kid_low=0.0, kid_high=0.02, precision=0.5,
                   precision_low=0.4, precision_high=0.6, recall=0.5, recall_low=0.4, recall_high=0.6) | {"n_fake": 40}


def _ddpm_inputs(compare_ancestral=4):
    import pandas as pd

    cfg = {"n_samples": 64, "sample_method": "ddim", "sample_steps": 10, "compare_ancestral": compare_ancestral,
           "compare_steps": "5,10", "fid_n": 40, "n_boot": 20, "fid_ancestral": False}
    trained = {"base_channels": 8, "channel_mults": "1,2,2,2", "n_res": 1, "batch_size": 64, "lr": 1e-3,
               "ema_decay": 0.99, "train_subset": 512, "T": 1000, "precision": "fp32"}
    history = [{"seconds": 30.0, "train_loss": 0.5, "test_loss": 0.6}, {"seconds": 90.0, "train_loss": 0.25,
                                                                          "test_loss": 0.3}]
    run = SimpleNamespace(model=SimpleNamespace(network=nn.Linear(100, 100)), result=SimpleNamespace(history=history),
                          config=trained)
    rows = [{"sampler": "DDIM", "steps": 5, "ms per sample": 2.0},
            {"sampler": "DDIM", "steps": 10, "ms per sample": 4.0},
            {"sampler": "ancestral", "steps": 1000, "ms per sample": 400.0}]
    steps = pd.DataFrame(rows[:2 + bool(compare_ancestral)])
    steps["speed-up vs ancestral"] = steps["ms per sample"].iloc[-1] / steps["ms per sample"]
    return cfg, run, steps


def test_ddpm_writes_its_numbers_and_the_fid_part_only_with_fid_rows(report_dir):
    from gen_lib import samplers

    cfg, run, steps = _ddpm_inputs()
    steps.loc[2, "sampler"] = samplers.sampler("ancestral").label
    steps.loc[:1, "sampler"] = samplers.sampler("ddim").label
    fid_q = {"DDIM-5": _row(3.0, 2.0, 4.0), "DDIM-10": _row(1.0, 0.5, 1.5), "real data": _row(0.2, 0.0, 0.4)}
    m = numbers.ddpm(cfg, run, n_train=1000, ms_per_sample=4.04, steps=steps, device="cpu", fid_q=fid_q,
                     fid_ms={"DDIM-5": 2.0, "DDIM-10": 4.0})
    assert m["ddpm.params"] == "0.01" and m["ddpm.mults"] == "1, 2, 2, 2" and m["ddpm.steps"] == "16"  # 512 / 64 x 2
    assert m["ddpm.trainmin"] == "1.5" and m["ddpm.trainloss"] == "0.2500" and m["ddpm.device"] == "CPU"
    assert m["ddpm.msper"] == "4.0" and m["ddpm.speedup"] == "200" and m["ddpm.speedupsteps"] == "5"
    assert m["ddpm.fid.on"] == "1" and m["ddpm.fid.best"] == "DDIM-10" and m["ddpm.fid.real"] == "0.30"
    assert m["ddpm.fid.samplers"] == "DDIM at 5 and 10 steps" and m["ddpm.fid.floorsep"].startswith("stays above")
    assert "val@ddpm.fid.tied" in _written(report_dir, "ddpm")
    cfg, run, steps = _ddpm_inputs(compare_ancestral=0)
    m = numbers.ddpm(cfg, run, n_train=1000, ms_per_sample=4.0, steps=steps, device="cpu")
    assert m["ddpm.speedup"] == "n/a" and not any(k.startswith("ddpm.fid.") for k in m)
    table = numbers.ddpm_fid_table(fid_q, {"DDIM-5": 2.0, "DDIM-10": 4.0}, "real data", feature_dim=32, n_boot=20,
                                   device="CPU")
    assert table["ms per sample"].tolist() == ["2.0", "4.0", "--"] and "FID (N = 40)" in table.columns
    assert numbers.ddpm_steps_table(steps, "CPU", "smoke")["ms per sample"].tolist() == ["2.0", "4.0"]


# ---------------------------------------------------------------- Part 2: sample quality and likelihood


def _quality_inputs():
    models = {"vae": "VAE, mean", "vaeparam": "VAE, parameter", "vaedraw": "VAE, draw", "flow": "RealNVP flow",
              "ddpm": "DDPM, DDIM-10, clipped", "ddpmode": "DDPM, DDIM-5, no clipping (ODE)"}
    fids = {"vae": 9.0, "vaeparam": 6.0, "vaedraw": 12.0, "flow": 5.0, "ddpm": 1.0, "ddpmode": 3.0}
    real = "real data (held-out vs test)"
    q = {real: _row(0.2, 0.0, 0.4), **{models[k]: _row(f, f - 0.5, f + 0.5) for k, f in fids.items()}}
    fid_small = {name: 2 * v["fid"] for name, v in q.items()}
    curve = {real: {16: (4.0, 1.0), 64: (1.0, 0.1)}, models["vae"]: {16: (20.0, 2.0), 64: (10.0, 1.0)}}
    nn_dist = {"test images": torch.full((5, 3), 4.0), **{name: torch.full((5, 3), 5.0) for name in models.values()}}
    g = torch.Generator().manual_seed(0)
    values = {d: base + 0.01 * torch.randn(20, generator=g, dtype=torch.float64)
              for d, base in (("flow", 1.2), ("ode", 1.1), ("bound", 1.4), ("quad", 1.5), ("iwae", 1.6))}
    estimates = [likelihood.Estimate("flow", "the flow", "exact", "change of variables", values["flow"]),
                 likelihood.Estimate("ddpm_ode", "the ODE", "exact", "ODE", values["ode"], "ddpm"),
                 likelihood.Estimate("ddpm_ancestral", "the ancestral", "bound", "bound", values["bound"], "ddpm"),
                 likelihood.Estimate("vae", "the VAE", "exact", "quadrature", values["quad"]),
                 likelihood.Estimate("vae", "the VAE", "bound", "IWAE", values["iwae"])]
    return models, real, q, fid_small, curve, nn_dist, estimates


def test_quality_writes_its_numbers(report_dir):
    cfg = config.resolve("quality", "smoke", _plan=False)
    models, real, q, fid_small, curve, nn_dist, estimates = _quality_inputs()
    images = {k: torch.full((70, 1, 28, 28), 0.5) for k in ("vae", "vaeparam", "vaedraw")}
    m = numbers.quality(cfg, models, real, q, fid_small, curve, nn_dist, estimates,
                        {"ddpm_ode": "ode check", "vae": "quad check"}, scope="some N", accuracy=0.98765,
                        vae_cfg={"prior": "flow", "epochs": 3}, classifier_cfg={"epochs": 2, "feature_dim": 32}, vae_elbo=1234.56, vae_images=images,
                        test_images=torch.zeros(70, 1, 28, 28), ode_grid=[0, 3, 9], sigma0=0.01,
                        smoothing={"bits": 1.23456, "zero": 0.8123, "one_bin": 1.7531})
    assert m["quality.n"] == f"{cfg['n_eval']:,}" and m["quality.scope"] == "some N"
    assert m["quality.odesamplesteps"] == "2" and m["quality.odesamplenfe"] == "4"
    assert m["quality.sigmazero"] == "0.010" and m["quality.onebin"] == "1.75" and m["quality.zeroshare"] == "81.2"
    assert m["quality.smoothcost"] == "1.235" and m["quality.check.rule"] == likelihood.refinement_rule()
    assert m["quality.accuracy"] == "98.77" and m["quality.vae_elbo"] == "1234.6"
    assert m["quality.vae_epochs"] == "3" and m["quality.classifier_epochs"] == "2"
    assert m["quality.best"] == "the DDPM (DDIM-10, clipped)"
    assert m["quality.ddpmodename"] == "DDIM-5, no clipping (ODE)"
    assert m["quality.vae.bestout"] == ("the parameter $\\lambda$ (its FID lies below every other output's (paired "
                                        "bootstrap over the same test images, 5\\,\\% level, Holm's correction over "
                                        "2 comparisons))")
    assert m["quality.vae.fidspread"] == "6.00"
    assert m["quality.fid.real"] == "0.30" and m["quality.fidsmall.flow"] == "10.20"
    assert m["quality.fidratio.flow"] == "2.0" and m["quality.curve_hi"] == "64"
    assert m["quality.curve.real.lo"] == "4.00" and m["quality.curve.vae.hi"] == "10.00"
    assert m["quality.bg.vaedraw"] == "0.500" and m["quality.bg.test"] == "0.000" and m["quality.nn.flow"] == "5.00"
    assert m["quality.copies"].startswith("No sample lies closer") and m["quality.nn_n"] == "5"
    assert m["quality.bpd.flow.exact"] == estimates[0].text() and m["quality.bpd.ddpmancestral.bound"]
    assert {"quality.gap.ddpm", "quality.gap.vae", "quality.rank", "quality.agree"} <= m.keys()
    assert m["quality.check.ode"] == "ode check" and m["quality.nlik"] == "20"
    assert m["quality.orig.fid.vae"] == f"{quality.ORIGINAL['vaeparam'][0]:.3f}"
    assert "val@quality.agree" in _written(report_dir, "quality")


def test_quality_tables(report_dir):
    models, real, q, fid_small, _, _, estimates = _quality_inputs()
    t2 = numbers.quality_table2(q, fid_small, models, n=64, scope="a smoke-test N, meaningless", feature_dim=32,
                                dataset_title="MNIST", accuracy=0.9, n_boot=20, pr_k=3)
    assert t2.index[0] == "real (held-out vs test)" and t2.loc["RealNVP flow", "orig. FID"] == "0.452"
    assert "(a smoke-test N, meaningless)" in (report_dir / "tables" / "quality_table2.tex").read_text()
    estimates[1].word, estimates[1].numerical = "estimate (probability-flow ODE)", 0.012
    numbers.quality_table3(estimates, q, models)
    tex = (report_dir / "tables" / "quality_table3.tex").read_text()
    assert "same 20 dequantized" in tex and "estimate (probability-flow ODE): ODE" in tex and "0.012" in tex
    assert "widened by both values' allowances" in tex


@pytest.mark.parametrize("n, words", [(10_000, "the study's N"), (64, "a smoke-test N, meaningless"),
                                      (2000, "the largest N the profile's samples allow"),
                                      (1000, "N = 1,000, fewer than the samples allow")])
def test_table2_scope_follows_from_n_not_the_profile_name(n, words):
    assert quality.scope(n, n_test=10_000, n_samples=2000) == words


def test_table3_tag_names_what_changes_the_numbers():
    assert numbers.table3_tag(64, 0, 32, (1, 2, 3)) == f"64_s0_b32_e1-2-3_v{likelihood.VERSION}"


# ---------------------------------------------------------------- Figure 1


@pytest.mark.parametrize("n, shape", [(1, (1, 1)), (2, (1, 2)), (3, (1, 3)), (4, (2, 2)), (6, (2, 3)), (5, (1, 5))])
def test_figure_1_lays_out_exactly_as_many_panels_as_priors(n, shape):
    assert (n // plots.even_columns(n), plots.even_columns(n)) == shape
    labels = [f"prior {i}" for i in range(n)]
    view = {"mu": torch.randn(30, 2), "logp": torch.zeros(5, 5), "extent": torch.tensor([-3.0, 3.0, -3.0, 3.0])}
    fig = plots.latent_densities({t: view for t in labels}, torch.randint(0, 10, (30,)), tuple("0123456789"))
    panels = [ax for ax in fig.axes if ax.get_title()]
    grids = {ax.get_subplotspec().get_topmost_subplotspec().get_geometry()[:2] for ax in panels}
    assert len(panels) == n and grids == {shape}


class _Encoder2D:
    """A stand-in VAE for `latent_view`: the images are their own encodings; the prior is N(0, I)."""

    latent_dim = 2

    def _device(self):
        return torch.device("cpu")

    def _dtype(self):
        return torch.float32

    def encode(self, x):
        return x, None

    def prior(self):
        return torch.distributions.Independent(torch.distributions.Normal(torch.zeros(2), torch.ones(2)), 1)


def test_figure_1_density_lies_under_every_encoding():
    from gen_lib import vae_eval

    mu = torch.distributions.Cauchy(0.0, 5.0).sample((1000, 2))  # heavy tails: a few encodings lie far out
    view = vae_eval.latent_view(_Encoder2D(), mu, n_grid=10, n_prior=200)
    lo1, hi1, lo2, hi2 = view["extent"].tolist()
    assert lo1 <= mu[:, 0].min() and mu[:, 0].max() <= hi1 and lo2 <= mu[:, 1].min() and mu[:, 1].max() <= hi2
    assert view["logp"].isfinite().all()
