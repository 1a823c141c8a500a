#!/usr/bin/env python3
"""Checks that Hugging Face `transformers` loads what `onebyte pretrain` writes as a
`GPT2LMHeadModel`, and that its logits equal the independent numpy forward pass of
gpt2_reference.py within 1e-4.

Needs numpy, safetensors, torch and transformers; run by hand where they are installed (CI never
needs them):

    onebyte pretrain --job deploy/jobs/tiny-lm.toml --steps 200 --out /tmp/lm/model.safetensors
    python3 engine/tests/reference/gpt2_transformers_check.py /tmp/lm/model.safetensors --heads 4

Prints the largest difference and exits non-zero when it is above the tolerance.
"""

import argparse
import pathlib
import shutil
import sys
import tempfile

import numpy as np
from safetensors.numpy import load_file

import gpt2_reference as reference

TOLERANCE = 1e-4


def main():
    p = argparse.ArgumentParser()
    p.add_argument("checkpoint", type=pathlib.Path)
    p.add_argument("--heads", type=int, required=True, help="attention heads (not in the file)")
    p.add_argument("--length", type=int, default=16, help="tokens per test sequence")
    a = p.parse_args()

    weights = load_file(str(a.checkpoint))
    vocab, width = weights["wte.weight"].shape
    context = weights["wpe.weight"].shape[0]
    layers = len({name.split(".")[1] for name in weights if name.startswith("h.")})
    # The numpy reference reads its sizes from module globals.
    reference.LAYERS, reference.WIDTH, reference.HEADS = layers, width, a.heads

    import torch
    from transformers import GenerationConfig, GPT2Config, GPT2LMHeadModel

    config = GPT2Config(
        vocab_size=vocab,
        n_positions=context,
        n_embd=width,
        n_layer=layers,
        n_head=a.heads,
        activation_function="gelu_new",
        layer_norm_epsilon=1e-5,
        tie_word_embeddings=True,
        # GPT-2's <|endoftext|> (50256) exists only in its own vocabulary.
        bos_token_id=50256 if vocab > 50256 else None,
        eos_token_id=50256 if vocab > 50256 else None,
    )
    with tempfile.TemporaryDirectory() as folder:
        # The folder a model is published as: our checkpoint, and the configuration files.
        shutil.copy(a.checkpoint, pathlib.Path(folder) / "model.safetensors")
        config.save_pretrained(folder)
        GenerationConfig.from_model_config(config).save_pretrained(folder)
        model = GPT2LMHeadModel.from_pretrained(folder).eval()

    rng = np.random.default_rng(0)
    worst = 0.0
    for _ in range(3):
        tokens = rng.integers(0, vocab, size=min(a.length, context))
        expected = reference.forward(weights, tokens)
        with torch.no_grad():
            got = model(torch.tensor(tokens[None, :])).logits[0].double().numpy()
        worst = max(worst, float(np.abs(got - expected).max()))
    print(f"GPT2LMHeadModel vs numpy: largest logit difference {worst:.2e} (tolerance {TOLERANCE})")
    sys.exit(0 if worst <= TOLERANCE else 1)


if __name__ == "__main__":
    main()
