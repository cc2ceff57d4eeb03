"""The runner's start-of-run estimate comes from this machine's own records, never from another machine's."""

import math

import pytest

from gen_lib import run, system


def test_estimates_come_from_this_machine_only():
    here = system.hardware()
    runs = {"01_priors": {"seconds": 600.0, "hardware": here}, "02_flow": {"seconds": 300.0, "hardware": "another CPU"}}
    expected = run._estimates("default", "mnist", runs)
    assert expected["01_priors"] == 600.0
    assert math.isnan(expected["02_flow"]) and math.isnan(expected["03_ddpm"])
    assert run._minutes(expected["02_flow"]).startswith("unknown")
    assert run._remaining(expected, ["01_priors", "02_flow"]) == "10.0 min + unknown"


def test_a_param_names_a_notebook_parameter_or_a_section_key(tmp_path, monkeypatch, capsys):
    """`--param seeds=3` is 01's notebook parameter; `--param quality_vae.prior=mog` any key of the profile, by its
    section's name (GEN_LIB_PARAMS carries it to the plan and the kernels); an unknown one stops before any work."""
    from gen_lib.study import config

    assert run.parse_params(["seeds=3", "quality_vae.prior=mog", "classifier.epochs=1"]) == {
        "seeds": 3, "quality_vae.prior": "mog", "classifier.epochs": 1}
    with pytest.raises(ValueError, match="SECTION.KEY=VALUE"):
        run.parse_params(["a.b.c=1"])
    monkeypatch.setenv(config.PARAMS_ENV, "")  # restored after the test: main sets it
    ran = []
    monkeypatch.setattr(run, "execute_measured", lambda *a, **k: ran.append(a) or (0.0, 0.0))
    args = ["--profile", "smoke", "--no-pdf", "--only", "02_flow", "--build-dir", str(tmp_path / "b"),
            "--report-dir", str(tmp_path / "r")]
    for bad, words in (("quality_vae.prior=bogus", "prior='bogus'"), ("quality_vae.vae_prior=mog", "vae_prior"),
                       ("quality.nosuch=1", "nosuch"), ("vae_prior=mog", "section.key")):
        with pytest.raises(SystemExit):
            run.main([*args, "--param", bad])
        assert words in capsys.readouterr().err and ran == []
    run.main([*args, "--param", "quality_vae.prior=mog", "--param", "classifier.epochs=1", "--param", "epochs=1"])
    assert ran and ran[0][3] == ["quality_vae.prior=mog", "classifier.epochs=1", "epochs=1"]
    assert config.resolve("quality_vae", "smoke")["prior"] == "mog"
    assert config.resolve("classifier", "smoke")["epochs"] == 1
    assert config.resolve("quality_vae", "default")["prior"] == "flow"  # the run's profile only
