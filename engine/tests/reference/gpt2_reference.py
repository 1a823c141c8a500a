#!/usr/bin/env python3
"""Writes a small GPT-2-format checkpoint with random weights and the logits of an independent
forward pass over it, for the engine's `gpt2_checkpoint_matches_reference_logits` test, and a
prompt classifier's loss over it for `label_word_loss_matches_reference`: the cross-entropy over
a few label words' logits at each row's last position (not over the whole vocabulary).

The forward pass below is written from GPT-2's definition with numpy in float64 and shares no
code with the engine. The checkpoint is laid out as Hugging Face's `GPT2LMHeadModel` saves it:
names under `transformer.`, linear weights `[in, out]` (GPT-2's Conv1D), the causal-mask
buffers `h.N.attn.bias`, and a position table longer than the rows the test reads.

Run from the repository root (needs numpy only): python3 engine/tests/reference/gpt2_reference.py
"""

import json
import pathlib
import struct

import numpy as np

LAYERS, WIDTH, HEADS, CONTEXT, VOCAB = 2, 32, 4, 24, 96
SEQUENCES, LENGTH = 2, 16
PROMPTS, LABEL_WORDS = 6, 3
HERE = pathlib.Path(__file__).parent


def random_weights(rng):
    """Name -> float32 array, in Hugging Face's names and shapes."""
    w = {}

    def normal(shape, std):
        return rng.normal(0.0, std, size=shape).astype(np.float32)

    w["wte.weight"] = normal((VOCAB, WIDTH), 0.3)
    w["wpe.weight"] = normal((CONTEXT, WIDTH), 0.1)
    for layer in range(LAYERS):
        p = f"h.{layer}."
        w[p + "ln_1.weight"] = (1.0 + normal((WIDTH,), 0.2)).astype(np.float32)
        w[p + "ln_1.bias"] = normal((WIDTH,), 0.1)
        w[p + "attn.c_attn.weight"] = normal((WIDTH, 3 * WIDTH), 0.2)
        w[p + "attn.c_attn.bias"] = normal((3 * WIDTH,), 0.1)
        w[p + "attn.c_proj.weight"] = normal((WIDTH, WIDTH), 0.2)
        w[p + "attn.c_proj.bias"] = normal((WIDTH,), 0.1)
        w[p + "ln_2.weight"] = (1.0 + normal((WIDTH,), 0.2)).astype(np.float32)
        w[p + "ln_2.bias"] = normal((WIDTH,), 0.1)
        w[p + "mlp.c_fc.weight"] = normal((WIDTH, 4 * WIDTH), 0.2)
        w[p + "mlp.c_fc.bias"] = normal((4 * WIDTH,), 0.1)
        w[p + "mlp.c_proj.weight"] = normal((4 * WIDTH, WIDTH), 0.1)
        w[p + "mlp.c_proj.bias"] = normal((WIDTH,), 0.1)
    w["ln_f.weight"] = (1.0 + normal((WIDTH,), 0.2)).astype(np.float32)
    w["ln_f.bias"] = normal((WIDTH,), 0.1)
    return w


def layer_norm(x, gain, bias):
    mean = x.mean(axis=-1, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=-1, keepdims=True)
    return (x - mean) / np.sqrt(var + 1e-5) * gain + bias


def gelu(x):
    return 0.5 * x * (1.0 + np.tanh(np.sqrt(2.0 / np.pi) * (x + 0.044715 * x**3)))


def forward(w, tokens):
    """Logits [T, vocab] for one sequence of token ids."""
    w = {k: v.astype(np.float64) for k, v in w.items()}
    t = len(tokens)
    hd = WIDTH // HEADS
    x = w["wte.weight"][tokens] + w["wpe.weight"][:t]
    causal = np.tril(np.ones((t, t), dtype=bool))
    for layer in range(LAYERS):
        p = f"h.{layer}."
        a = layer_norm(x, w[p + "ln_1.weight"], w[p + "ln_1.bias"])
        qkv = a @ w[p + "attn.c_attn.weight"] + w[p + "attn.c_attn.bias"]
        q, k, v = np.split(qkv, 3, axis=-1)
        heads = []
        for h in range(HEADS):
            cols = slice(h * hd, (h + 1) * hd)
            scores = q[:, cols] @ k[:, cols].T / np.sqrt(hd)
            scores = np.where(causal, scores, -np.inf)
            scores = np.exp(scores - scores.max(axis=-1, keepdims=True))
            heads.append(scores / scores.sum(axis=-1, keepdims=True) @ v[:, cols])
        x = x + np.concatenate(heads, axis=-1) @ w[p + "attn.c_proj.weight"] + w[p + "attn.c_proj.bias"]
        m = layer_norm(x, w[p + "ln_2.weight"], w[p + "ln_2.bias"])
        x = x + gelu(m @ w[p + "mlp.c_fc.weight"] + w[p + "mlp.c_fc.bias"]) @ w[p + "mlp.c_proj.weight"] + w[p + "mlp.c_proj.bias"]
    x = layer_norm(x, w["ln_f.weight"], w["ln_f.bias"])
    return x @ w["wte.weight"].T


def label_word_loss(w, prompts, readout, labels):
    """Mean cross-entropy of each row's label among the label words' logits at its last position."""
    total = 0.0
    for row, label in zip(prompts, labels):
        scores = forward(w, row)[-1][readout]
        scores = scores - scores.max()
        total -= scores[label] - np.log(np.exp(scores).sum())
    return round(float(total / len(prompts)), 9)


def write_safetensors(path, tensors, metadata):
    """The safetensors format: u64 header length, a JSON header, then the raw little-endian data."""
    header, blobs, offset = {"__metadata__": metadata}, [], 0
    for name, array in tensors.items():
        data = np.ascontiguousarray(array).astype(array.dtype.newbyteorder("<")).tobytes()
        dtype = {np.float32: "F32", np.uint8: "BOOL"}[array.dtype.type]
        header[name] = {"dtype": dtype, "shape": list(array.shape), "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    path.write_bytes(struct.pack("<Q", len(text)) + text + b"".join(blobs))


def main():
    rng = np.random.default_rng(20231101)
    weights = random_weights(rng)
    tensors = {}
    for name, array in weights.items():
        tensors["transformer." + name] = array
    for layer in range(LAYERS):
        mask = np.tril(np.ones((CONTEXT, CONTEXT), dtype=np.uint8)).reshape(1, 1, CONTEXT, CONTEXT)
        tensors[f"transformer.h.{layer}.attn.bias"] = mask
    write_safetensors(HERE / "gpt2-random.safetensors", tensors, {"format": "pt"})

    tokens = rng.integers(0, VOCAB, size=(SEQUENCES, LENGTH))
    logits = np.stack([forward(weights, row) for row in tokens])
    # Drawn after the logits' tokens, so that those stay as they were.
    prompts = rng.integers(0, VOCAB, size=(PROMPTS, LENGTH))
    readout = rng.choice(VOCAB, size=LABEL_WORDS, replace=False)
    labels = rng.integers(0, LABEL_WORDS, size=PROMPTS)
    reference = {
        "layers": LAYERS, "width": WIDTH, "heads": HEADS, "context": CONTEXT, "vocab": VOCAB,
        "tokens": tokens.tolist(),
        "logits": [[[round(float(v), 7) for v in position] for position in row] for row in logits],
        "prompts": prompts.tolist(),
        "readout": readout.tolist(),
        "labels": labels.tolist(),
        "label_word_loss": label_word_loss(weights, prompts, readout, labels),
    }
    (HERE / "gpt2-random-logits.json").write_text(json.dumps(reference) + "\n")


if __name__ == "__main__":
    main()
