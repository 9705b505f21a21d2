"""The model behind the ``classifier`` predictor: a Hugging Face token-classification checkpoint.

:class:`TokenModel` is the small interface the predictor needs (tokenize with character offsets;
run a batch of forwards, each continuing its own cached context; crop a cache), so the
predictor's windowing and alignment logic can be tested without torch. :class:`HFTokenModel`
implements it with ``transformers``.

One batched forward serves items with cached contexts of different lengths: each item's cached
keys and values are left-padded to the longest, its new tokens right-padded, and the attention
mask hides both pads; position ids continue each item's own positions. Afterwards each item's
cache is cut back out (copied, so the batch's tensors can be freed).
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

from ..errors import ConfigError
from ..hf import cache_tensors, import_torch, import_transformers, torch_dtype

__all__ = ["HFTokenModel", "TokenModel", "is_causal_config", "resolve_device"]

logger = logging.getLogger(__name__)

#: A model's cached context: opaque to the predictor (for HF models, per-layer key/value tensors).
Past = Any


class TokenModel(Protocol):
    """What the classifier predictor asks of its model."""

    #: Whether outputs at a position depend only on the tokens up to it (then a cache may be reused).
    causal: bool

    def tokenize(self, text: str) -> tuple[list[int], list[tuple[int, int]]]:
        """Token ids of ``text`` (no special tokens added) and each token's character span."""
        ...

    def forward(
        self, items: Sequence[tuple[Sequence[int], Past | None]], want_past: bool
    ) -> list[tuple[list[float], Past | None]]:
        """For each item (new token ids, cache of the tokens before them): the style probability
        at each new position (the label at position j is the type of token j + 1) and, when
        ``want_past``, the cache covering the old and new tokens."""
        ...

    def crop(self, past: Past, n_tokens: int) -> Past:
        """The cache of the first ``n_tokens`` tokens only."""
        ...


def _import_torch() -> tuple[Any, Any]:
    purpose = "The classifier boundary predictor (and predictor training)"
    return import_torch(purpose), import_transformers(purpose)


def resolve_device(device: str) -> str:
    """``auto`` becomes ``cuda`` where a GPU is visible, else ``cpu``."""
    torch, _ = _import_torch()
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device {device!r} was asked for but no CUDA device is visible; use device: cpu or auto")
    return device


def is_causal_config(config: Any) -> bool:
    """Whether a backbone config is a causal (decoder-only) model.

    A model type that has a causal-LM head and no masked-LM head is a decoder (Llama, Qwen,
    SmolLM2, Mistral, Gemma); encoders such as BERT have both heads and are causal only when
    configured as decoders.
    """
    if getattr(config, "is_decoder", False):
        return True
    try:
        from transformers.models.auto.modeling_auto import (
            MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
            MODEL_FOR_MASKED_LM_MAPPING_NAMES,
        )
    except ImportError:  # pragma: no cover - very old or very new transformers
        return False
    model_type = getattr(config, "model_type", "")
    return model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES and model_type not in MODEL_FOR_MASKED_LM_MAPPING_NAMES


def style_label_of(config: Any) -> int:
    """The label index meaning *style*: one named ``style`` in ``id2label``, else 1."""
    id2label = getattr(config, "id2label", None) or {}
    for idx, name in id2label.items():
        if str(name).lower() == "style":
            return int(idx)
    return 1


class HFTokenModel:
    """A ``transformers`` token-classification model with its (fast) tokenizer."""

    def __init__(self, model: Any, tokenizer: Any, *, device: str = "cpu") -> None:
        torch, _ = _import_torch()
        self._torch = torch
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.device = device
        config = model.config
        if getattr(config, "num_labels", 2) != 2:
            raise ConfigError(
                f"a boundary classifier needs exactly two labels (capability, style); this one has {config.num_labels}"
            )
        if not getattr(tokenizer, "is_fast", False):
            raise ConfigError("the classifier's tokenizer must be a fast tokenizer (it needs character offsets)")
        self.style_label = style_label_of(config)
        params = inspect.signature(model.forward).parameters
        self._cache_arg = next((p for p in ("cache", "past_key_values") if p in params), None)
        self.causal = is_causal_config(config) and self._cache_arg is not None
        pad = tokenizer.pad_token_id
        self.pad_id = int(pad if pad is not None else (tokenizer.eos_token_id or 0))

    @classmethod
    def load(cls, path: Path, *, device: str = "auto", dtype: str = "auto") -> HFTokenModel:
        """Load a checkpoint folder (``save_pretrained`` layout, tokenizer included)."""
        torch, transformers = _import_torch()
        if not path.is_dir():
            raise ConfigError(
                f"the classifier checkpoint {path} is not a folder (train one with 'tessy predictor train')"
            )
        device = resolve_device(device)
        try:
            tokenizer = transformers.AutoTokenizer.from_pretrained(str(path))
            model = transformers.AutoModelForTokenClassification.from_pretrained(str(path))
        except (OSError, ValueError) as exc:
            raise ConfigError(f"cannot load the classifier checkpoint {path}: {exc}") from exc
        model = model.to(device=device, dtype=torch_dtype(torch, dtype, device))
        logger.info("loaded classifier %s on %s (%s)", path, device, model.dtype)
        return cls(model, tokenizer, device=device)

    def tokenize(self, text: str) -> tuple[list[int], list[tuple[int, int]]]:
        enc = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        return list(enc["input_ids"]), [(int(a), int(b)) for a, b in enc["offset_mapping"]]

    def crop(self, past: Past, n_tokens: int) -> Past:
        return tuple((k[:, :, :n_tokens], v[:, :, :n_tokens]) for k, v in past)

    def forward(
        self, items: Sequence[tuple[Sequence[int], Past | None]], want_past: bool
    ) -> list[tuple[list[float], Past | None]]:
        torch = self._torch
        use_cache = want_past and self.causal
        b = len(items)
        past_lens = [0 if p is None else int(p[0][0].shape[2]) for _, p in items]
        new_lens = [len(ids) for ids, _ in items]
        if min(new_lens, default=1) < 1:
            raise ValueError("every item needs at least one new token")
        p_max, n_max = max(past_lens), max(new_lens)
        ids = torch.full((b, n_max), self.pad_id, dtype=torch.long)
        mask = torch.zeros((b, p_max + n_max), dtype=torch.long)
        pos = torch.zeros((b, n_max), dtype=torch.long)
        for i, ((new, _), p_len, n_len) in enumerate(zip(items, past_lens, new_lens, strict=True)):
            ids[i, :n_len] = torch.tensor(list(new), dtype=torch.long)
            mask[i, p_max - p_len : p_max + n_len] = 1
            pos[i] = torch.arange(p_len, p_len + n_max)
        kwargs: dict[str, Any] = {
            "input_ids": ids.to(self.device),
            "attention_mask": mask.to(self.device),
            "position_ids": pos.to(self.device),
        }
        cache = None
        if use_cache:
            cache = self._batched_cache([p for _, p in items], past_lens, p_max)
            assert self._cache_arg is not None
            kwargs[self._cache_arg] = cache
            kwargs["use_cache"] = True
        elif p_max:
            raise ValueError("a cached context was given to a model that cannot reuse one")
        with torch.inference_mode():
            logits = self.model(**kwargs).logits
            probs = torch.softmax(logits.float(), dim=-1)[..., self.style_label].cpu()
            layers = cache_tensors(cache) if cache is not None else None
            out: list[tuple[list[float], Past | None]] = []
            for i, (p_len, n_len) in enumerate(zip(past_lens, new_lens, strict=True)):
                item_past = None
                if layers is not None:
                    lo, hi = p_max - p_len, p_max + n_len
                    item_past = tuple(
                        (k[i : i + 1, :, lo:hi].clone(), v[i : i + 1, :, lo:hi].clone()) for k, v in layers
                    )
                out.append((probs[i, :n_len].tolist(), item_past))
        return out

    def _batched_cache(self, pasts: Sequence[Past | None], past_lens: list[int], p_max: int) -> Any:
        torch = self._torch
        from transformers import DynamicCache

        cache = DynamicCache()
        if p_max == 0:
            return cache
        template = next(p for p in pasts if p is not None)
        for layer, (k0, v0) in enumerate(template):
            keys, values = [], []
            for past, p_len in zip(pasts, past_lens, strict=True):
                if past is None:
                    keys.append(k0.new_zeros((1, k0.shape[1], p_max, k0.shape[3])))
                    values.append(v0.new_zeros((1, v0.shape[1], p_max, v0.shape[3])))
                    continue
                k, v = past[layer]
                pad = p_max - p_len
                keys.append(torch.nn.functional.pad(k, (0, 0, pad, 0)) if pad else k)
                values.append(torch.nn.functional.pad(v, (0, 0, pad, 0)) if pad else v)
            cache.update(torch.cat(keys), torch.cat(values), layer)
        return cache
