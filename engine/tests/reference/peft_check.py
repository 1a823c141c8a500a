#!/usr/bin/env python3
"""Checks that the `peft` library loads the LoRA adapters `onebyte export` writes, over the base
the job pins, and computes what `onebyte export --merge` computes: the same logits within 1e-4
from (a) PeftModel over GPT2LMHeadModel with the adapter folder, (b) GPT2LMHeadModel from the
merged folder and (c) the numpy forward pass of gpt2_reference.py on the merged weights; and
that the adapters move the base's logits (so that the agreement is not the base with itself).

Needs numpy, safetensors, torch, transformers and peft; run by hand where they are installed
(CI never needs them):

    onebyte simulate --job lora.toml --peers 1 --contributions 200 --save-checkpoint /tmp/s.safetensors
    onebyte export --job lora.toml --snapshot /tmp/s.safetensors --out /tmp/adapter
    onebyte export --job lora.toml --snapshot /tmp/s.safetensors --out /tmp/merged --merge
    python3 engine/tests/reference/peft_check.py /tmp/adapter /tmp/merged BASE.safetensors

Prints the largest differences and exits non-zero when one is above the tolerance.
"""

import argparse
import json
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
    p.add_argument("adapter", type=pathlib.Path, help="folder of adapter_model.safetensors")
    p.add_argument("merged", type=pathlib.Path, help="folder `onebyte export --merge` wrote")
    p.add_argument("base", type=pathlib.Path, help="the base checkpoint the job pins")
    p.add_argument("--length", type=int, default=16, help="tokens per test sequence")
    a = p.parse_args()

    import torch
    from peft import PeftModel
    from transformers import GPT2LMHeadModel

    config = json.loads((a.merged / "config.json").read_text())
    merged_weights = load_file(str(a.merged / "model.safetensors"))
    reference.LAYERS, reference.WIDTH, reference.HEADS = (
        config["n_layer"],
        config["n_embd"],
        config["n_head"],
    )
    with tempfile.TemporaryDirectory() as folder:
        shutil.copy(a.base, pathlib.Path(folder) / "model.safetensors")
        shutil.copy(a.merged / "config.json", pathlib.Path(folder) / "config.json")
        base = GPT2LMHeadModel.from_pretrained(folder).eval()
        base_copy = GPT2LMHeadModel.from_pretrained(folder).eval()
    adapted = PeftModel.from_pretrained(base_copy, str(a.adapter)).eval()
    merged = GPT2LMHeadModel.from_pretrained(str(a.merged)).eval()

    rng = np.random.default_rng(0)
    vocab, context = config["vocab_size"], config["n_positions"]
    worst = {"peft vs merged": 0.0, "peft vs numpy": 0.0, "adapters' effect": 0.0}
    for _ in range(3):
        tokens = rng.integers(0, vocab, size=min(a.length, context))
        x = torch.tensor(tokens[None, :])
        with torch.no_grad():
            got = adapted(x).logits[0].double().numpy()
            whole = merged(x).logits[0].double().numpy()
            plain = base(x).logits[0].double().numpy()
        expected = reference.forward(merged_weights, tokens)
        worst["peft vs merged"] = max(worst["peft vs merged"], float(np.abs(got - whole).max()))
        worst["peft vs numpy"] = max(worst["peft vs numpy"], float(np.abs(got - expected).max()))
        worst["adapters' effect"] = max(worst["adapters' effect"], float(np.abs(got - plain).max()))
    for what, value in worst.items():
        print(f"{what}: largest logit difference {value:.2e}")
    ok = worst["peft vs merged"] <= TOLERANCE and worst["peft vs numpy"] <= TOLERANCE
    if worst["adapters' effect"] <= 10 * TOLERANCE:
        print("the adapters barely move the base: train longer before checking")
        ok = False
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
