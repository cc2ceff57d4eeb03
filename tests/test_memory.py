"""The memory plan: the paper profile's large phases (IWAE K = 5000 on 10,000 images, ancestral sampling
of 10,000 images, FID at N = 10,000) are chunked so that their peak stays within 8 GiB on a CPU and
40 GiB on a GPU, whatever K and N are. Asserted from the chunk and batch sizes, before any run."""

import subprocess
import sys

import pytest
import torch

from gen_lib.study import memory
from gen_lib import vae, vae_eval


@pytest.mark.parametrize("profile", ["default", "paper"])
def test_every_phase_fits_the_budgets(profile):
    plan = memory.plan(profile)
    assert set(plan) == {"iwae", "sampling", "features", "fid"}
    for phase, need in plan.items():
        assert 0 < need <= memory.CPU_BUDGET <= memory.GPU_BUDGET, f"{profile} {phase}: {need / 2**30:.2f} GiB"


def test_the_plan_follows_the_sizes_not_k_or_n():
    # the IWAE bound is chunked: its peak does not depend on K (nor on the number of images)
    assert memory.iwae_chunk_bytes() == memory.iwae_chunk_bytes(chunk=memory.IWAE_CHUNK)
    big = memory.plan("paper", {"ddpm": {"sample_batch": 100_000}})
    assert big["sampling"] > memory.CPU_BUDGET  # an unbounded batch would not fit: the check can fail


def test_activation_bound_is_an_upper_bound_of_the_measured_peak(tmp_path):
    """The per-example bound, times a batch, exceeds the peak RSS that a forward of that batch adds
    (measured in a fresh process, so that nothing else's memory counts)."""
    script = (
        "import resource, torch\n"
        "from gen_lib.study import config, models\n"
        "torch.set_num_threads(1)\n"
        "d = models.build('ddpm', config.resolve('ddpm', 'paper')).eval()\n"
        "x, t = torch.randn(64, 1, 28, 28), torch.zeros(64, dtype=torch.long)\n"
        "with torch.no_grad(): d.network(x[:2], t[:2])\n"  # warm-up: allocator pools, kernels
        "r0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "with torch.no_grad(): d.network(x, t)\n"
        "print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - r0) * 1024)\n")
    measured = int(subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                                  check=True).stdout.split()[-1])
    from gen_lib.study import config, models

    ddpm = models.build("ddpm", config.resolve("ddpm", "paper"))
    bound = 64 * memory.activation_bytes_per_example(ddpm.network, torch.zeros(2, 1, 28, 28),
                                                     torch.zeros(2, dtype=torch.long))
    assert measured <= bound, (measured, bound)


def test_iwae_uses_the_planned_chunk():
    model = vae.build_vae("gaussian", hidden=32)
    x = torch.zeros(4, 1, 28, 28)
    calls = []
    original = model.log_weights
    model.log_weights = lambda x, z, *a: calls.append(z.shape[0] * z.shape[1]) or original(x, z, *a)
    with torch.no_grad():
        vae_eval.evaluate(model, x, k=memory.IWAE_CHUNK)  # K * B = 4 chunks
    assert max(calls) <= memory.IWAE_CHUNK and sum(calls) == memory.IWAE_CHUNK * 4
