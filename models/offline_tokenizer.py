"""A byte-level BPE tokenizer trained in-process, so made-up models work with no hub.

Trained on a fixed built-in text with fixed settings, it is the same on every run; the
vocabulary is padded with `<extra_N>` tokens to exactly the model's vocab size, so every id
the model can emit decodes.
"""

from __future__ import annotations

from pathlib import Path

SPECIAL_TOKENS = ["<unk>", "<s>", "</s>", "<pad>"]  # ids 0..3
UNK_ID, BOS_ID, EOS_ID, PAD_ID = 0, 1, 2, 3

_TEXT = """\
The swarm serves a language model one block at a time. Each node keeps a few layers in
memory, and a client streams activations through a chain of nodes to generate text.
Every step is signed, every receipt can be checked, and honest work earns credits.
Once upon a time there was a small model that wanted to speak. It learned the alphabet,
the numbers one two three four five six seven eight nine ten, and the words of the day:
hello, world, water, river, mountain, forest, garden, summer, winter, morning, evening.
The quick brown fox jumps over the lazy dog. Pack my box with five dozen liquor jugs.
def forward(self, hidden): return self.layers(hidden)  # code is text too
0123456789 + - * / = < > ( ) [ ] { } , . ; : ! ? ' " @ # $ % ^ & _ | ~
"""


def train_tokenizer(vocab_size: int):  # -> transformers.PreTrainedTokenizerFast
    """A PreTrainedTokenizerFast with exactly `vocab_size` tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    if vocab_size < 300:
        raise ValueError("vocab size must be at least 300 for a byte-level tokenizer")
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator([_TEXT] * 4, trainer=trainer)
    size = tok.get_vocab_size()
    if size < vocab_size:
        tok.add_tokens([f"<extra_{i}>" for i in range(vocab_size - size)])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<pad>"
    )


def write_tokenizer(out_dir: Path, vocab_size: int) -> None:
    train_tokenizer(vocab_size).save_pretrained(out_dir)
