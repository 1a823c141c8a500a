"""PyTorch's pre-training speed for a GPT-2 configuration, the yardstick for `onebyte pretrain`.

Trains the same architecture as engine/src/transformer.rs (learned positions, pre-LayerNorm
blocks, causal attention, tanh-GELU MLP, output tied to the token embedding) with Adam on
random tokens, every position predicting the next, on all of this machine's cores, and prints
tokens per second as the last line. `cargo xtask bench` runs it where torch is installed;
nothing in CI needs it.

    python3 pretrain_torch.py --layers 2 --width 64 --heads 4 --context 64 --vocab 256 --batch 16
"""

import argparse
import os
import time

import torch
import torch.nn.functional as F


class Block(torch.nn.Module):
    def __init__(self, width, heads):
        super().__init__()
        self.heads = heads
        self.ln_1 = torch.nn.LayerNorm(width, eps=1e-5)
        self.c_attn = torch.nn.Linear(width, 3 * width)
        self.c_proj = torch.nn.Linear(width, width)
        self.ln_2 = torch.nn.LayerNorm(width, eps=1e-5)
        self.c_fc = torch.nn.Linear(width, 4 * width)
        self.mlp_proj = torch.nn.Linear(4 * width, width)

    def forward(self, h):
        b, t, w = h.shape
        q, k, v = self.c_attn(self.ln_1(h)).split(w, dim=2)
        split = lambda m: m.view(b, t, self.heads, w // self.heads).transpose(1, 2)
        attended = F.scaled_dot_product_attention(split(q), split(k), split(v), is_causal=True)
        h = h + self.c_proj(attended.transpose(1, 2).reshape(b, t, w))
        return h + self.mlp_proj(F.gelu(self.c_fc(self.ln_2(h)), approximate="tanh"))


class Gpt2(torch.nn.Module):
    def __init__(self, layers, width, heads, context, vocab):
        super().__init__()
        self.wte = torch.nn.Embedding(vocab, width)
        self.wpe = torch.nn.Embedding(context, width)
        self.blocks = torch.nn.ModuleList(Block(width, heads) for _ in range(layers))
        self.ln_f = torch.nn.LayerNorm(width, eps=1e-5)

    def forward(self, tokens):
        positions = torch.arange(tokens.shape[1])
        h = self.wte(tokens) + self.wpe(positions)
        for block in self.blocks:
            h = block(h)
        return self.ln_f(h) @ self.wte.weight.T


def main():
    p = argparse.ArgumentParser()
    for name in ["layers", "width", "heads", "context", "vocab", "batch"]:
        p.add_argument(f"--{name}", type=int, required=True)
    p.add_argument("--steps", type=int, default=0, help="timed steps (0: about 5 s worth)")
    a = p.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    torch.manual_seed(0)
    model = Gpt2(a.layers, a.width, a.heads, a.context, a.vocab)
    adam = torch.optim.Adam(model.parameters(), lr=1e-3)
    tokens = torch.randint(0, a.vocab, (a.batch, a.context + 1))

    def step():
        logits = model(tokens[:, :-1])
        loss = F.cross_entropy(logits.reshape(-1, a.vocab), tokens[:, 1:].reshape(-1))
        adam.zero_grad()
        loss.backward()
        adam.step()

    for _ in range(2):
        step()
    steps = a.steps
    if steps == 0:
        start = time.perf_counter()
        step()
        steps = max(3, int(5.0 / (time.perf_counter() - start)))
    start = time.perf_counter()
    for _ in range(steps):
        step()
    seconds = time.perf_counter() - start
    print(a.batch * a.context * steps / seconds)


if __name__ == "__main__":
    main()
