"""Loading a backbone (and its tokenizer) for a boundary classifier.

A backbone is named by a checkpoint folder (``save_pretrained`` layout: a Hugging Face model
or a tessy predictor), by a GGUF file, or by a catalogued model name (``smollm2-135m``; see
:mod:`tessy.models`). A GGUF file is converted once into an ordinary folder in tessy's cache
(:func:`tessy.hf.model_folder`), which loads in a second and saves like any checkpoint.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from ..errors import ConfigError

__all__ = ["LABELS", "load_backbone", "load_tokenizer"]

logger = logging.getLogger(__name__)

#: The two labels of a boundary classifier, by index.
LABELS = {0: "capability", 1: "style"}


def _transformers() -> Any:
    from ..hf import import_torch, import_transformers

    import_torch("Training and evaluating predictors")
    return import_transformers("Training and evaluating predictors")


def load_tokenizer(spec: str | Path) -> Any:
    """The backbone's (fast) tokenizer, with a padding token."""
    from ..hf import load_hf_tokenizer

    _transformers()
    tokenizer = load_hf_tokenizer(spec)
    if not getattr(tokenizer, "is_fast", False):
        raise ConfigError(f"the tokenizer of {spec} is not a fast tokenizer; character offsets need one")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_backbone(spec: str | Path) -> tuple[Any, Any]:
    """A two-label token-classification model on the backbone, and its tokenizer.

    The classification head is new (randomly initialised) unless the folder already holds a
    two-label token classifier, which is then trained further.
    """
    from ..hf import model_folder

    transformers = _transformers()
    folder = model_folder(spec)
    tokenizer = load_tokenizer(spec)
    auto = transformers.AutoModelForTokenClassification
    label_kwargs = {"num_labels": 2, "id2label": LABELS, "label2id": {v: k for k, v in LABELS.items()}}
    verbosity = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()  # a new head is expected: no "missing weights" report
    try:
        model = auto.from_pretrained(str(folder), **label_kwargs)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot load the backbone {spec} as a token classifier: {exc}") from exc
    finally:
        transformers.logging.set_verbosity(verbosity)
    model.config.pad_token_id = tokenizer.pad_token_id
    logger.info("backbone %s (%s, %s parameters)", spec, model.config.model_type, f"{model.num_parameters():,}")
    return model, tokenizer
