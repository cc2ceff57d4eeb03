"""The training recipes and the one run identity: epochs are not part of it, so a longer run resumes a
shorter one; every other training parameter is."""

import json

import pytest
import torch

from gen_lib.study import config, recipes
from gen_lib import checkpoints, data, priors, training


@pytest.mark.parametrize("section", ["priors", "quality_vae", "flow", "ddpm", "classifier"])
def test_run_key_leaves_out_epochs_and_keeps_everything_else(section):  # each run is configured by its section
    cfg = recipes.settled(section, {**config.resolve(section, "smoke"), "prior": "mog", "seed": 0})
    key = recipes.run_key(section, cfg)
    assert recipes.run_key(section, {**cfg, **{k: "auto" for k in config.PRECISION_KEYS.get(section, {})}}) \
        == key  # "auto" settles to this machine's cached choice before the identity is taken
    for epochs in recipes.EPOCHS[section]:
        assert epochs not in key
        assert recipes.run_key(section, {**cfg, epochs: cfg[epochs] + 5}) == key  # same run, resumed
    for name in recipes.IDENTITY[section]:
        value = cfg[name]
        other = {"prior": "flow", "dataset": "fashion"}.get(name) or \
            ((not value) if isinstance(value, bool) else value + ("x" if isinstance(value, str) else 1))
        assert recipes.run_key(section, {**cfg, name: other}) != key, name
    assert recipes.run_key(section, {**cfg, "n_samples": 12345, "profile": "paper"}) == key  # not training


def test_run_key_holds_the_prior_sizes_of_its_own_prior_only():
    cfg = {**config.resolve("priors", "smoke"), "prior": "mog", "seed": 0}
    key = recipes.run_key("priors", cfg)
    assert key["mog_n_components"] == priors.spec("mog").defaults()["n_components"]
    assert recipes.run_key("priors", {**cfg, "mog_n_components": 3}) != key
    assert recipes.run_key("priors", {**cfg, "flow_n_layers": 3}) == key  # another prior's size
    with pytest.raises(ValueError, match="lacks seed"):
        recipes.run_key("priors", {k: v for k, v in cfg.items() if k != "seed"})
    with pytest.raises(ValueError, match="section='gan' has no recipe"):
        recipes.run_key("gan", cfg)


def test_a_longer_run_resumes_a_shorter_one(tmp_build):
    x, _ = data.load_mnist("train")
    cfg = config.resolve("priors", "smoke", train_subset=256, batch_size=64, epochs=1)
    short = recipes.train_vae(cfg, data.binarize(x), prior="gaussian", seed=0, device="cpu", progress=False)
    longer = recipes.train_vae({**cfg, "epochs": 2}, data.binarize(x), prior="gaussian", seed=0, device="cpu",
                               progress=False)
    assert short.result.status == "trained" and longer.result.status == "resumed"
    # beside the checkpoint: the identity (config.json) and the whole configuration that used it
    identity = json.loads((short.folder / "config.json").read_text())
    whole = json.loads((short.folder / "config-smoke.json").read_text())
    assert "test_subset" not in identity and whole["test_subset"] == cfg["test_subset"] and whole["epochs"] == 2
    assert longer.folder == short.folder and [h["epoch"] for h in longer.history] == [1, 2]
    assert longer.history[0] == short.history[0]  # the first epoch is the shorter run's, not trained again
    again = recipes.train_vae({**cfg, "epochs": 2}, data.binarize(x), prior="gaussian", seed=0, device="cpu",
                              progress=False)
    assert again.result.status == "reused"
    assert all(torch.equal(a, b) for a, b in zip(again.model.state_dict().values(), longer.model.state_dict().values()))
    other = recipes.train_vae({**cfg, "lr": 2e-3}, data.binarize(x), prior="gaussian", seed=0, device="cpu",
                              progress=False)
    assert other.folder != short.folder and other.result.status == "trained"  # another run, from scratch


def test_classifier_schedule_drops_the_rate_for_the_decay_epochs():
    cfg = {"epochs": 2, "decay_epochs": 1}
    schedule = recipes._classifier_schedule(cfg)
    total = 3 * 10  # 3 epochs of 10 steps
    assert [schedule(s, total) for s in (0, 19, 20, 29)] == [1.0, 1.0, 0.1, 0.1]
    longer = recipes._classifier_schedule({"epochs": 2, "decay_epochs": 3})
    assert longer.__name__ == schedule.__name__  # the name joins the checkpoint's identity: epochs are not in it
    with pytest.raises(ValueError, match="decay_epochs=0"):
        recipes._classifier_schedule({"epochs": 2, "decay_epochs": 0})


def test_fit_takes_a_schedule_function_and_records_its_name(tmp_path):
    model = torch.nn.Linear(2, 1)
    x = torch.randn(40, 2)
    rates = []

    def halve_after_first_epoch(step, total):
        rates.append(0.5 if step >= total // 2 else 1.0)
        return rates[-1]

    training.fit(model, x, epochs=2, batch_size=10, lr=0.1, seed=0, config={"t": 1}, device="cpu", progress=False,
                 loss_fn=lambda m, b: m(b).pow(2).mean(), schedule=halve_after_first_epoch,
                 checkpoint=tmp_path / "c.pt")
    assert rates == [1.0] * 4 + [0.5] * 4
    assert checkpoints.load_checkpoint(tmp_path / "c.pt")["config"]["schedule"] == "halve_after_first_epoch"


def test_part2_vae_trains_on_dequantized_images(tmp_build, monkeypatch):
    """Table 3 scores the VAE's density of dequantized y: it must be trained on y, fresh u every epoch."""
    cfg = config.resolve("quality_vae", "smoke", train_subset=128, batch_size=64, epochs=1)
    key = recipes.run_key("quality_vae", cfg)
    assert "dequantized" in key["train_data"]  # a run trained on raw pixels has another identity
    x, _ = data.load_mnist("train")
    seen = []
    dequantize = data.dequantize

    def spy(images, generator=None):  # the views that fit makes of its batches, through the recipe's transform
        out = dequantize(images, generator=generator)
        seen.append((images, out))
        return out

    monkeypatch.setattr(data, "dequantize", spy)
    run = recipes.train_vae(cfg, x, section="quality_vae", device="cpu", progress=False)
    assert len(seen) == 128 // 64  # every batch of the one epoch went through the transform inside fit
    for images, y in seen:
        assert not torch.equal(y, images)  # jittered, within one 8-bit bin of the pixel
        assert ((y * 256 - images * 255) >= 0).all() and ((y * 256 - images * 255) < 1).all()
    assert run.model.decoder.likelihood == "continuous_bernoulli"


def test_part_1_trains_on_the_whole_training_split_and_the_scored_models_leave_the_held_out_images():
    """The held-out images are needed only where a real-data floor is computed (03, 04): the models those score and
    the feature classifier train on "fit"; Part 1 computes none and trains on all training images. Each run's
    identity says which."""
    assert recipes.TRAIN_SPLIT == {"priors": "train", "flow": "fit", "ddpm": "fit", "quality_vae": "fit",
                                   "classifier": "fit"}
    for section, split in recipes.TRAIN_SPLIT.items():
        assert recipes.FIXED[section]["train_images"].startswith(f"the '{split}' split")
    # the scored models' identities keep their text: their runs are not retrained
    fit_text = f"the 'fit' split: the training split less its last {data.HELD_OUT} images"
    assert all(recipes.FIXED[s]["train_images"] == fit_text for s in ("flow", "ddpm", "quality_vae", "classifier"))
    cfg = config.resolve("priors", "smoke")
    key = recipes.run_key("priors", {**cfg, "prior": "gaussian", "seed": 0}, measure=False)
    assert key["train_images"] == recipes.SPLIT_WORDS["train"]
