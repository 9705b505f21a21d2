"""Tiny Hugging Face models for predictor tests: a byte-level BPE tokenizer trained on the spot and
a randomly initialised two-layer Llama token classifier. Built in a second, no files needed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

CORPUS = [
    "Okay, so I need to add 17 and 25. Let me add the units first: 7 + 5 = 12.",
    "Hmm, that carries one. So the total is 42. Wait, let me double-check: 42 - 25 = 17.",
    "Now the function loops over the list and keeps a running total in O(n) time.",
    "Alright, let's see what is left to do. Then we return the sum of every element.",
    "def total(xs):\n    return sum(xs)\n\nThe answer is 42, since 7 + 5 carries one into the tens.",
    "But if the list is empty, the sum is 0. Actually, maybe we should check the input first.",
]


def tiny_tokenizer(vocab_size: int = 400) -> Any:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<pad>", "<eos>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS * 4, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>")


def tiny_classifier(tokenizer: Any, seed: int = 0, decisive: bool = True) -> Any:
    """A random two-layer Llama token classifier. ``decisive`` scales its head so that its style
    probabilities sit far from 0.5: comparisons of two runs then do not flip on rounding."""
    import torch
    from transformers import AutoModelForTokenClassification, LlamaConfig

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        num_labels=2,
        pad_token_id=tokenizer.pad_token_id,
    )
    model = AutoModelForTokenClassification.from_config(config).eval()
    if decisive:
        with torch.no_grad():
            model.score.weight.mul_(200.0)
    return model


def save_tiny_backbone(folder: Path, seed: int = 0, decisive: bool = True) -> Path:
    """A tiny checkpoint folder (model and tokenizer), usable as a predictor, or (``decisive=False``)
    as a backbone to train."""
    tokenizer = tiny_tokenizer()
    model = tiny_classifier(tokenizer, seed, decisive)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(folder))
    tokenizer.save_pretrained(str(folder))
    return folder
