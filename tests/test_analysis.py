"""What the notebooks used to compute inline, now in gen_lib: Holm's correction and Welch's test (against
statsmodels and scipy), batched seeded sampling, FID against N, the Part-1 views of a VAE, the figures that
adapt to the number of models, and the runner's notebook parameters."""

import matplotlib
import pytest
import torch

matplotlib.use("Agg")

from _bounds import Z  # noqa: E402
from gen_lib import metrics, report, run, sample_sets, stats, vae, vae_eval
from gen_lib.report import plots  # noqa: E402


# ---------------------------------------------------------------- stats


def test_holm_matches_statsmodels():
    from statsmodels.stats.multitest import multipletests

    g = torch.Generator().manual_seed(0)
    for m in (1, 2, 3, 7, 20):
        p = (torch.rand(m, generator=g, dtype=torch.float64) ** 3).tolist()  # many small ones: the step-down matters
        p[0] = p[-1]  # a tie
        expected = multipletests(p, method="holm")[1]
        assert stats.holm(p) == pytest.approx(list(expected), abs=1e-15)


def test_holm_worked_example():
    # Holm (1979): sorted 0.01 < 0.02 < 0.03 < 0.04 -> 4 * 0.01, max(3 * 0.02, .), max(2 * 0.03, .), max(0.04, .)
    assert stats.holm([0.04, 0.01, 0.03, 0.02]) == pytest.approx([0.06, 0.04, 0.06, 0.06])
    assert stats.holm([0.5, 0.9]) == [1.0, 1.0]  # capped at 1
    with pytest.raises(ValueError, match="in \\[0, 1\\]"):
        stats.holm([0.1, 1.5])


def test_holm_family_adjusts_a_whole_table_at_once():
    table = {"elbo": {"a": 0.01, "b": 0.04}, "iwae": {"a": 0.03, "b": 0.02}}
    flat = stats.holm([0.01, 0.04, 0.03, 0.02])  # the worked example below: one family of four
    assert stats.holm_family(table) == {"elbo": {"a": flat[0], "b": flat[1]}, "iwae": {"a": flat[2], "b": flat[3]}}
    assert stats.holm_family(table)["elbo"]["a"] > stats.holm([0.01, 0.04])[0]  # a larger family: more correction


def test_welch_vs_baseline_is_scipy_then_holm():
    from scipy.stats import ttest_ind

    groups = {"base": [1.0, 1.2, 0.9, 1.1], "a": [1.5, 1.4, 1.8, 1.6], "b": [1.0, 1.3, 0.8, 1.2]}
    raw = [ttest_ind(groups[n], groups["base"], equal_var=False).pvalue for n in ("a", "b")]
    assert stats.welch_vs_baseline(groups, "base") == pytest.approx(dict(zip(("a", "b"), stats.holm(raw))))
    with pytest.raises(ValueError, match="at least 2 values"):
        stats.welch_vs_baseline({"base": [1.0], "a": [1.0, 2.0]}, "base")
    with pytest.raises(ValueError, match="baseline='c'"):
        stats.welch_vs_baseline(groups, "c")


# ---------------------------------------------------------------- sampling and FID


def test_draw_is_seeded_batched_and_independent_of_the_batch_size():
    calls = []

    def sample(k, g):
        calls.append(k)
        return torch.rand(k, 1, 2, 2, generator=g, dtype=torch.float64)

    a = sample_sets.draw(sample, 10, batch_size=4, seed=3)
    assert calls == [4, 4, 2] and a["images"].shape == (10, 1, 2, 2) and a["images"].dtype == torch.float32
    assert a["seconds_per_sample"] >= 0
    b = sample_sets.draw(sample, 10, batch_size=10, seed=3)  # one generator for the run: the same stream
    assert torch.equal(a["images"], b["images"])
    assert not torch.equal(a["images"], sample_sets.draw(sample, 10, batch_size=4, seed=4)["images"])
    with pytest.raises(ValueError, match="batch_size=0"):
        sample_sets.draw(sample, 10, batch_size=0, seed=3)


def test_fid_vs_n_and_disjoint_subsets():
    g = torch.Generator().manual_seed(0)
    ref, same = torch.randn(600, 4, generator=g), torch.randn(600, 4, generator=g)
    sizes = metrics.fid_sizes(4, 600)
    assert sizes == [64, 128, 256, 500]
    curve = metrics.fid_vs_n(ref, same, sizes, repeats=3)
    assert set(curve) == set(sizes) and all(sd >= 0 for _, sd in curve.values())
    # two samples of one distribution: FID's bias falls with N (about d(d+1)/(2N) per set here)
    assert curve[64][0] > curve[500][0]
    one = metrics.fid_from_features(ref[:64], same[:64])
    assert metrics.fid_disjoint(ref[:64], same[:64], 64) == pytest.approx(one)
    mean = sum(metrics.fid_from_features(ref[i:i + 100], same[i:i + 100]) for i in range(0, 600, 100)) / 6
    assert metrics.fid_disjoint(ref, same, 100, max_subsets=8) == pytest.approx(mean)
    with pytest.raises(ValueError, match="n=700"):
        metrics.fid_disjoint(ref, same, 700)


# ---------------------------------------------------------------- the Part-1 views of a VAE


@pytest.fixture(scope="module")
def small_vae():
    torch.manual_seed(0)
    return vae.build_vae("mog", hidden=32), (torch.rand(40, 1, 28, 28) < 0.3).float()


def test_iwae_by_k_is_seeded_and_rises_with_k_on_average(small_vae):
    """Seeded: the same seed gives the same values. E[IWAE_50] >= E[IWAE_1] (Burda et al., Theorem 1): the mean
    gain over 8 independent draws lies above zero by more than Z standard errors of that mean."""
    model, x = small_vae
    a, b = vae_eval.iwae_by_k(model, x, (1, 50), seed=1), vae_eval.iwae_by_k(model, x, (1, 50), seed=1)
    assert a == b
    gains = torch.tensor([(lambda v: v[50] - v[1])(vae_eval.iwae_by_k(model, x, (1, 50), seed=s)) for s in range(8)])
    assert gains.mean() - Z * gains.std() / 8 ** 0.5 > 0, gains


def test_latent_view_and_decoded_plane(small_vae):
    model, x = small_vae
    view = vae_eval.latent_view(model, x, n_grid=30, n_prior=500)
    lo1, hi1, lo2, hi2 = view["extent"].tolist()
    assert view["logp"].shape == (30, 30) and view["mu"].shape == (40, 2)
    assert lo1 < view["mu"][:, 0].min() and view["mu"][:, 0].max() < hi1  # the box holds the encodings (+ 10 %)
    assert lo2 < view["mu"][:, 1].min() and view["mu"][:, 1].max() < hi2
    z = torch.tensor([[lo1, lo2], [hi1, hi2]])  # corners of the grid: log p there is what the prior says
    with torch.no_grad():
        corners = model.prior().log_prob(z)
    assert view["logp"][0, 0] == pytest.approx(corners[0].item(), abs=1e-4)
    assert view["logp"][-1, -1] == pytest.approx(corners[1].item(), abs=1e-4)
    assert vae_eval.decoded_plane(model, x, n=5).shape == (25, 1, 28, 28)


# ---------------------------------------------------------------- figures adapt to the number of models


@pytest.mark.parametrize("n", [1, 4, 5, 7])
def test_figures_have_one_panel_per_model(n, small_vae):
    model, x = small_vae
    view = vae_eval.latent_view(model, x, n_grid=10, n_prior=100)
    labels = [f"prior {i}" for i in range(n)]
    fig = plots.latent_densities({t: view for t in labels}, torch.randint(0, 10, (40,)), tuple("0123456789"))
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    assert titles == labels  # (the other axes are colour bars)
    images = {t: torch.rand(4, 1, 28, 28) for t in labels}
    fig = plots.image_rows({"samples": images, "latent grid": images}, nrow={"samples": 2})
    assert [ax.get_title() for ax in fig.axes] == [f"{t}: {r}" for r in ("samples", "latent grid") for t in labels]
    fig = plots.seed_bands({t: [[{"epoch": 1, "a": 1.0}, {"epoch": 2, "a": 0.5}]] * 2 for t in labels}, {"a": "a"})
    assert len(fig.axes[0].get_lines()) == n
    fig, axes = plots.panels(n, ncols=3)
    assert len(axes) == len(fig.axes) == n
    matplotlib.pyplot.close("all")


# ---------------------------------------------------------------- report text and the runner's parameters


def test_report_helpers():
    assert report.join_words([]) == "" and report.join_words(["a"]) == "a"
    assert report.join_words(["a", "b", "c"]) == "a, b and c"
    assert report.mean_pm([1.0, 2.0, 3.0]) == "$2.00 \\pm 1.00$" and report.mean_pm([2.0]) == "$2.00 \\pm 0.00$"
    assert report.latex_escape("a_b & 5%") == "a\\_b \\& 5\\%"


def test_runner_params(capsys):
    assert run.parse_params(["priors=gaussian,flow", "seeds=3", "x=None", "s="]) == \
        {"priors": "gaussian,flow", "seeds": 3, "x": None, "s": ""}
    # profiles.toml's spelling of booleans works too (a string "false" would be truthy in the notebook)
    assert run.parse_params(["bf16=false", "a=True", "b=TRUE", "c=none"]) == {"bf16": False, "a": True, "b": True,
                                                                              "c": None}
    with pytest.raises(ValueError, match="NAME=VALUE"):
        run.parse_params(["priors"])
    assert {"profile", "dataset", "priors", "seeds", "epochs"} <= run._declared(run.SOURCE_NOTEBOOKS / "01_priors.ipynb")
    with pytest.raises(SystemExit):  # a parameter no notebook of the run declares is refused, not dropped
        run.main(["--profile", "smoke", "--only", "02_flow", "--param", "priors=flow", "--no-pdf"])
    assert "--param priors: no notebook of 02_flow declares a parameter 'priors'" in capsys.readouterr().err
