"""Child process for the kill/resume test: trains a small noisy model with checkpoints.

usage: python _train_script.py CHECKPOINT OUT EPOCHS [SLEEP_PER_STEP]
"""
import sys
import time

import torch
from torch import nn

from gen_lib import system
from gen_lib.training import fit


class Noisy(nn.Module):
    """A regression whose loss draws noise: resuming must restore the random streams too."""

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 1))

    def loss(self, batch):
        x, y = batch[:, :8], batch[:, 8:]
        x = x + 0.1 * torch.randn_like(x)
        return (self.net(x) - y).pow(2).mean()


def make_data():
    g = torch.Generator().manual_seed(123)
    x = torch.randn(512, 8, generator=g)
    return torch.cat([x, x.sum(1, keepdim=True).sin()], 1)


def main(ckpt, out, epochs, sleep=0.0):
    torch.manual_seed(999)  # initial weights; resumption must not depend on it
    model = Noisy()
    slow = (lambda b, g: (time.sleep(sleep), b)[1]) if sleep else None
    fit(model, make_data(), epochs=epochs, batch_size=32, lr=1e-2, seed=7, config={"test": "kill"},
        checkpoint=ckpt, transform=slow, device="cpu", progress=True, desc="child")
    torch.save(model.state_dict(), out)


if __name__ == "__main__":
    system.configure_threads()
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4]) if len(sys.argv) > 4 else 0.0)
