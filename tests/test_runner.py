"""The runner's start-of-run estimate comes from this machine's own records, never from another machine's."""

import math

from gen_lib import run, system


def test_estimates_come_from_this_machine_only():
    here = system.hardware()
    runs = {"01_priors": {"seconds": 600.0, "hardware": here}, "02_flow": {"seconds": 300.0, "hardware": "another CPU"}}
    expected = run._estimates("default", "mnist", runs)
    assert expected["01_priors"] == 600.0
    assert math.isnan(expected["02_flow"]) and math.isnan(expected["03_ddpm"])
    assert run._minutes(expected["02_flow"]).startswith("unknown")
    assert run._remaining(expected, ["01_priors", "02_flow"]) == "10.0 min + unknown"
