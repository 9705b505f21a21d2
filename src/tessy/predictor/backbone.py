"""Loading a backbone (and its tokenizer) for a boundary classifier.

A backbone is named by a checkpoint folder (``save_pretrained`` layout: a Hugging Face model
or a tessy predictor), by a GGUF file, or by a catalogued model name (``smollm2-135m``; see
:mod:`tessy.models`). GGUF weights are dequantised by ``transformers`` and copied into a freshly
built model, because a model loaded from GGUF cannot be saved as it is.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from ..errors import ConfigError, MissingDependencyError

__all__ = ["LABELS", "load_backbone", "load_tokenizer", "resolve_backbone"]

logger = logging.getLogger(__name__)

#: The two labels of a boundary classifier, by index.
LABELS = {0: "capability", 1: "style"}


def _transformers() -> Any:
    try:
        import torch  # noqa: F401  (transformers needs it for models)
        import transformers
    except ImportError as exc:
        raise MissingDependencyError(exc.name or "transformers", "hf", "training and evaluating predictors") from exc
    return transformers


def resolve_backbone(spec: str | Path) -> tuple[str, Path]:
    """``("folder", path)`` or ``("gguf", path)`` for a backbone spec."""
    path = Path(spec).expanduser()
    if path.is_dir():
        return "folder", path
    from .. import models

    return "gguf", models.resolve(str(spec))


def _from(kind: str, path: Path) -> tuple[str, dict[str, Any]]:
    if kind == "gguf":
        return str(path.parent), {"gguf_file": path.name}
    return str(path), {}


def load_tokenizer(spec: str | Path) -> Any:
    """The backbone's (fast) tokenizer, with a padding token."""
    transformers = _transformers()
    kind, path = resolve_backbone(spec)
    where, kwargs = _from(kind, path)
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(where, **kwargs)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot load a tokenizer from {path}: {exc}") from exc
    if not getattr(tokenizer, "is_fast", False):
        raise ConfigError(f"the tokenizer of {path} is not a fast tokenizer; character offsets need one")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_backbone(spec: str | Path) -> tuple[Any, Any]:
    """A two-label token-classification model on the backbone, and its tokenizer.

    The classification head is new (randomly initialised) unless the folder already holds a
    two-label token classifier, which is then trained further.
    """
    transformers = _transformers()
    kind, path = resolve_backbone(spec)
    where, kwargs = _from(kind, path)
    tokenizer = load_tokenizer(spec)
    auto = transformers.AutoModelForTokenClassification
    label_kwargs = {"num_labels": 2, "id2label": LABELS, "label2id": {v: k for k, v in LABELS.items()}}
    try:
        model = auto.from_pretrained(where, **kwargs, **label_kwargs)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot load the backbone {path} as a token classifier: {exc}") from exc
    if kind == "gguf":
        fresh = auto.from_config(model.config)
        fresh.load_state_dict(model.state_dict())
        model = fresh
    model.config.pad_token_id = tokenizer.pad_token_id
    logger.info("backbone %s (%s, %s parameters)", path, model.config.model_type, f"{model.num_parameters():,}")
    return model, tokenizer
