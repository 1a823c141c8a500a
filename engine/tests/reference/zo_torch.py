"""PyTorch's forward pass and a MeZO-style zeroth-order step for a GPT-2 configuration, or for
an MLP (`--mlp 64,1024,1024,10`: ReLU between layers, cross-entropy over the last), the
yardstick for one onebyte peer (`Replica::batch_loss`, `Replica::propose`).

The model is pretrain_torch.py's (the architecture of engine/src/transformer.rs). The loss is
the next-token cross-entropy at each window's last position, as a onebyte language-model job
reads it. The step is MeZO's: for every parameter draw z ~ N(0, 1) from a seeded generator and
add εz in place, take the loss, subtract 2εz (z drawn again from the same seed), take the loss,
add εz back, then subtract lr·g·z. Prints "forward_s step_s fastest_forward_s" as the last
line: the median of a few runs each, on all of this machine's cores, and the fastest of five
groups' mean forward pass (noise on a shared machine only slows a run down). `cargo xtask bench` runs it where torch is
installed; nothing in CI needs it.

    python3 zo_torch.py --layers 12 --width 768 --heads 12 --context 32 --vocab 50257 --batch 4
    python3 zo_torch.py --mlp 64,1024,1024,10 --batch 64
"""

import argparse
import os
import statistics
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from pretrain_torch import Gpt2  # noqa: E402


def last_position_loss(model, tokens, targets):
    positions = torch.arange(tokens.shape[1])
    h = model.wte(tokens) + model.wpe(positions)
    for block in model.blocks:
        h = block(h)
    logits = model.ln_f(h[:, -1]) @ model.wte.weight.T
    return F.cross_entropy(logits, targets)


def perturb(params, seed, scale):
    generator = torch.Generator().manual_seed(seed)
    for p in params:
        z = torch.randn(p.shape, generator=generator)
        p.add_(z, alpha=scale)


def median_seconds(f, runs):
    return statistics.median(seconds_each(f, runs))


def seconds_each(f, runs):
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        f()
        times.append(time.perf_counter() - start)
    return times


def fastest_group_seconds(f, runs, groups=5):
    """The fastest of `groups` groups' mean time, `runs` runs in all."""
    size = max(1, runs // groups)
    return min(statistics.mean(seconds_each(f, size)) for _ in range(groups))


def gpt2_problem(a):
    """The model's parameters and its loss on one batch of random tokens."""
    model = Gpt2(a.layers, a.width, a.heads, a.context, a.vocab)
    tokens = torch.randint(0, a.vocab, (a.batch, a.context))
    targets = torch.randint(0, a.vocab, (a.batch,))
    return list(model.parameters()), lambda: last_position_loss(model, tokens, targets)


def mlp_problem(a):
    """An MLP of the given widths, ReLU between layers, and its loss on one random batch."""
    widths = [int(w) for w in a.mlp.split(",")]
    layers = []
    for i, (n_in, n_out) in enumerate(zip(widths, widths[1:])):
        layers.append(torch.nn.Linear(n_in, n_out))
        if i + 2 < len(widths):
            layers.append(torch.nn.ReLU())
    model = torch.nn.Sequential(*layers)
    x = torch.rand(a.batch, widths[0]) * 2 - 1
    y = torch.randint(0, widths[-1], (a.batch,))
    return list(model.parameters()), lambda: F.cross_entropy(model(x), y)


def main():
    p = argparse.ArgumentParser()
    for name in ["layers", "width", "heads", "context", "vocab"]:
        p.add_argument(f"--{name}", type=int)
    p.add_argument("--mlp", help="widths, input first: 64,1024,1024,10")
    p.add_argument("--batch", type=int, required=True)
    p.add_argument("--runs", type=int, default=3)
    a = p.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    torch.manual_seed(0)
    params, loss = mlp_problem(a) if a.mlp else gpt2_problem(a)
    eps, lr = 1e-3, 1e-5
    seeds = iter(range(1, 1 << 30))

    @torch.no_grad()
    def forward():
        loss().item()

    @torch.no_grad()
    def step():
        seed = next(seeds)
        perturb(params, seed, eps)
        plus = loss().item()
        perturb(params, seed, -2 * eps)
        minus = loss().item()
        perturb(params, seed, eps)
        g = (plus - minus) / (2 * eps)
        perturb(params, seed, -lr * g)

    forward()
    step()
    runs = a.runs if not a.mlp else 20 * a.runs
    print(
        f"{median_seconds(forward, runs)} {median_seconds(step, runs)} "
        f"{fastest_group_seconds(forward, runs)}"
    )


if __name__ == "__main__":
    main()
