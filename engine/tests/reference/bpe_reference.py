#!/usr/bin/env python3
"""Writes a small byte-level BPE `tokenizer.json` as Hugging Face's `tokenizers` saves GPT-2's,
and the token ids that library gives for a set of texts, for the engine's
`bpe_matches_the_reference_tokenizer` test.

The tokenizer is trained here on a few sentences of our own (its merges are whatever training
finds); the texts probe what GPT-2's pre-tokenizer does with contractions, digits, runs of
spaces, tabs and newlines, punctuation, non-ASCII letters, bytes that are not UTF-8 letters,
and the special token, then 200 random strings of such characters.

Run from the repository root (needs `pip install tokenizers`):
    python3 engine/tests/reference/bpe_reference.py
"""

import json
import pathlib
import random

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

HERE = pathlib.Path(__file__).parent
SPECIAL = "<|endoftext|>"

CORPUS = [
    "The soup was great, and the bread was even better.",
    "It was a terrible film: two hours I'll never get back.",
    "We didn't like the ending; they'd changed the book's plot.",
    "Prices rose 12% in 2024, then fell by 3.5 points.",
    "Café crème, naïve façade, smörgåsbord, Ελληνικά, 日本語.",
    "    indented line\n\ttabbed line\n\nblank above",
    "Great great GREAT!!! Terrible... terrible?!",
] * 20

TEXTS = [
    "The soup was great.",
    "It was terrible",
    " leading space and trailing space ",
    "I'll say they'd won, we're sure it's ok, you've seen, I'm in",
    "Numbers: 12345 and 3.14159, 2024-12-04",
    "many    spaces   here",
    "tabs\tand\nnewlines\n\n  mixed \t whitespace",
    "Café naïve Ελληνικά 日本語 emoji 🙂",
    "unseen words: zygomorphic quixotry",
    "punctuation!!! ... ?! --- (parens) [brackets] {braces}",
    f"one document{SPECIAL}another one",
    "",
    "   ",
]


def random_texts(count, seed):
    """Texts drawn from characters the pattern treats differently, in every order."""
    rng = random.Random(seed)
    pool = list("  \t\n\r'sdltmvre") + list("aZé日Ω") + list("0123٣") + list(".,!?-'\"()🙂\x00\x7f")
    return ["".join(rng.choice(pool) for _ in range(rng.randrange(0, 24))) for _ in range(count)]


def main():
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=[SPECIAL],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(CORPUS, trainer)
    tokenizer.save(str(HERE / "bpe-tokenizer.json"))
    cases = []
    for text in TEXTS + random_texts(200, 7):
        ids = tokenizer.encode(text).ids
        decoded = tokenizer.decode(ids, skip_special_tokens=False)
        cases.append({"text": text, "ids": ids, "decoded": decoded})
    # One case a line, so that a change shows in a diff as the texts it touches.
    lines = ",\n".join("  " + json.dumps(case, ensure_ascii=False) for case in cases)
    (HERE / "bpe-encodings.json").write_text(
        f'{{"vocab_size": {tokenizer.get_vocab_size()}, "cases": [\n{lines}\n]}}\n'
    )


if __name__ == "__main__":
    main()
