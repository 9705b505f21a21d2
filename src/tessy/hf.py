"""Hugging Face models and tokenizers from a folder, a GGUF file or a catalogued model name.

transformers reads a GGUF file by parsing its metadata and dequantising its weights to float32,
which takes from tens of seconds to minutes on a small CPU. The first load converts the file
into an ordinary Hugging Face folder (``config.json``, ``model.safetensors``, tokenizer files)
inside tessy's cache (see :func:`tessy.models.cache_dir`); later loads read that folder in about
a second. The folder's name holds the GGUF file's size and modification time, so a changed file
is converted again. torch and transformers are imported only here, and only when used.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from .backends.base import TokenScores
from .errors import ConfigError, MissingDependencyError

__all__ = [
    "ModelSource",
    "cache_tensors",
    "import_torch",
    "import_transformers",
    "load_hf_model",
    "load_hf_tokenizer",
    "locate",
    "model_folder",
    "score_tokens",
    "torch_dtype",
]

logger = logging.getLogger(__name__)

#: ``owner/name`` on the Hugging Face Hub (not a path that exists here).
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*")

#: Bumped when the conversion of GGUF files changes, so older conversions are not reused.
_CONVERSION = 2


def import_torch(purpose: str = "The hf backend") -> ModuleType:
    try:
        import torch
    except ImportError as exc:
        raise MissingDependencyError("torch", "hf", purpose) from exc
    return torch


def import_transformers(purpose: str = "Hugging Face models and tokenizers") -> ModuleType:
    """transformers, with its loading progress bars off (a library must not draw on stderr)."""
    try:
        import transformers
    except ImportError as exc:
        raise MissingDependencyError("transformers", "hf", purpose) from exc
    _quiet(transformers)
    return transformers


@dataclass(frozen=True)
class ModelSource:
    """Where a model lives: a Hugging Face folder, or a GGUF file inside a folder."""

    folder: Path
    gguf_file: str | None = None

    @property
    def path(self) -> Path:
        return self.folder / self.gguf_file if self.gguf_file else self.folder

    def converted(self) -> Path:
        """The cache folder that holds this GGUF file converted (meaningless for folders)."""
        from .models import cache_dir

        assert self.gguf_file is not None
        st = self.path.resolve().stat()
        stamp = f"{self.path.resolve()}:{st.st_size}:{st.st_mtime_ns}:{_CONVERSION}"
        key = hashlib.sha256(stamp.encode()).hexdigest()[:12]
        return cache_dir() / "hf" / f"{Path(self.gguf_file).stem}-{key}"


def locate(spec: str | Path) -> ModelSource:
    """Find a model given as a folder, a ``.gguf`` file, a name from
    :data:`tessy.models.CATALOGUE`, or a Hugging Face Hub id (``Qwen/Qwen3-0.6B-Base``), which
    transformers fetches into its own cache where the Hub can be reached."""
    from . import models

    path = Path(spec).expanduser()
    if path.is_dir():
        return ModelSource(path)
    if path.is_file():
        return ModelSource(path.parent, path.name)
    if str(spec) in models.CATALOGUE:
        found = models.resolve(str(spec))
        return ModelSource(found.parent, found.name)
    if isinstance(spec, str) and _HUB_ID.fullmatch(spec):
        return ModelSource(Path(spec))
    raise ConfigError(
        f"cannot find the model {str(spec)!r}: give a Hugging Face model folder or Hub id, a .gguf "
        f"file, or one of the catalogued models ({', '.join(models.CATALOGUE)})"
    )


def _quiet(transformers: ModuleType) -> None:
    # Loading draws progress bars on stderr; a library must not.
    utils = getattr(transformers, "utils", None)
    logging_mod = getattr(utils, "logging", None)
    if logging_mod is not None and hasattr(logging_mod, "disable_progress_bar"):
        logging_mod.disable_progress_bar()


@contextlib.contextmanager
def _no_tqdm() -> Iterator[None]:
    """GGUF dequantisation draws its own tqdm bar, whatever transformers' progress-bar setting;
    silence it for the conversion (one module's name, put back afterwards)."""
    import importlib

    try:
        module = importlib.import_module("transformers.modeling_gguf_pytorch_utils")
    except ImportError:
        module = None
    original = getattr(module, "tqdm", None)
    if original is None:
        yield
        return

    def quiet(iterable: Any = None, *args: Any, **kwargs: Any) -> Any:
        kwargs["disable"] = True
        return original(iterable, *args, **kwargs)

    module.tqdm = quiet  # type: ignore[union-attr]
    try:
        yield
    finally:
        module.tqdm = original  # type: ignore[union-attr]


def load_hf_tokenizer(spec: str | Path) -> Any:
    """The transformers tokenizer of a model folder, GGUF file or catalogued model."""
    transformers = import_transformers()
    src = locate(spec)
    try:
        if src.gguf_file is None:
            return transformers.AutoTokenizer.from_pretrained(str(src.folder))
        folder = src.converted() / "tokenizer"
        if (folder / "tokenizer_config.json").is_file():
            return transformers.AutoTokenizer.from_pretrained(str(folder))
        logger.info("converting the tokenizer of %s (once; it is cached in %s)", src.path, folder)
        tok = transformers.AutoTokenizer.from_pretrained(str(src.folder), gguf_file=src.gguf_file)
        _save_atomically(folder, tok.save_pretrained)
        return tok
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot load a tokenizer from {src.path}: {exc}") from exc


def load_hf_model(spec: str | Path, *, device: str = "cpu", dtype: str = "auto") -> Any:
    """A causal language model in eval mode on ``device`` (``cpu``, ``cuda``, ``cuda:1``).

    ``dtype`` is ``auto`` (float32 on CPU, bfloat16 on CUDA where supported, else float16),
    ``float32``, ``bfloat16`` or ``float16``.
    """
    torch = import_torch()
    transformers = import_transformers()
    folder = model_folder(spec)
    try:
        model = transformers.AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch_dtype(torch, dtype, device))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot load a model from {folder}: {exc}") from exc
    model.to(device)
    model.eval()
    return model


def model_folder(spec: str | Path) -> Path:
    """An ordinary Hugging Face folder holding the model's weights: the folder itself, or for a
    GGUF file its conversion in tessy's cache (made on first use)."""
    transformers = import_transformers()
    src = locate(spec)
    if src.gguf_file is None:
        return src.folder
    folder = src.converted() / "model"
    if not (folder / "config.json").is_file():
        try:
            _convert_gguf_model(transformers, src, folder)
        except (OSError, ValueError) as exc:
            raise ConfigError(f"cannot convert the model {src.path}: {exc}") from exc
    return folder


def torch_dtype(torch: ModuleType, dtype: str, device: str) -> Any:
    """The torch dtype for a ``dtype`` setting: ``auto`` is float32 on CPU, bfloat16 on CUDA where
    supported, else float16."""
    if dtype == "auto":
        if device.startswith("cuda"):
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    try:
        return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]
    except KeyError:
        raise ConfigError(f"unknown dtype {dtype!r}: use auto, float32, bfloat16 or float16") from None


def cache_tensors(cache: Any) -> list[tuple[Any, Any]]:
    """Per-layer ``(keys, values)`` of a transformers ``DynamicCache``, across versions."""
    layers = getattr(cache, "layers", None)
    if layers is not None:
        return [(layer.keys, layer.values) for layer in layers]
    return list(zip(cache.key_cache, cache.value_cache, strict=True))  # transformers < 4.56


def _convert_gguf_model(transformers: ModuleType, src: ModelSource, folder: Path) -> None:
    """Dequantise a GGUF model once and save it as an ordinary folder.

    A model loaded from GGUF refuses ``save_pretrained``; a fresh model built from its config
    takes its weights and saves normally.
    """
    logger.info("converting %s to a Hugging Face folder (once; it is cached in %s)", src.path, folder)
    with _no_tqdm():
        loaded = transformers.AutoModelForCausalLM.from_pretrained(str(src.folder), gguf_file=src.gguf_file)
    fresh = transformers.AutoModelForCausalLM.from_config(loaded.config)
    fresh.load_state_dict(loaded.state_dict())
    fresh.generation_config = loaded.generation_config
    # The weights are plain floats now: a "gguf" quantization entry left in the config would make
    # every model loaded from the folder (a predictor fine-tuned on it, say) refuse to be saved.
    fresh.config.__dict__.pop("quantization_config", None)

    def save(tmp: str) -> None:
        fresh.save_pretrained(tmp)

    _save_atomically(folder, save)


def _save_atomically(folder: Path, save: Any) -> None:
    """Write a folder through a temporary sibling, so no reader ever sees half of it."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = folder.with_name(f"{folder.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        save(str(tmp))
        try:
            os.replace(tmp, folder)
        except OSError:
            if not folder.is_dir():  # another process won the race: keep its copy
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def score_tokens(
    tokenizer: Any, model: Any, prompt: str, continuation: str, *, max_tokens: int, ranks: bool = False
) -> TokenScores:
    """Log-probabilities of ``continuation``'s tokens after ``prompt`` (both tokenised apart, so
    the continuation's tokens are exactly its own), within ``max_tokens`` of context; with
    ``ranks``, each token's exact 1-based rank among the model's predictions too (one plus the
    number of tokens with a strictly higher logit, so tied tokens share the better rank)."""
    import torch

    prompt_ids: list[int] = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    spans: list[tuple[int, int]] | None = None
    if getattr(tokenizer, "is_fast", False):
        encoded = tokenizer(continuation, add_special_tokens=False, return_offsets_mapping=True)
        cont_ids: list[int] = encoded["input_ids"]
        spans = [(int(a), int(b)) for a, b in encoded["offset_mapping"]]
    else:
        cont_ids = tokenizer(continuation, add_special_tokens=False)["input_ids"]
    truncated = False
    if len(cont_ids) > max_tokens - 1:
        cont_ids, truncated = cont_ids[: max_tokens - 1], True
    room = max_tokens - len(cont_ids)
    if len(prompt_ids) > room:
        prompt_ids, truncated = prompt_ids[-room:], True
    if not cont_ids:
        return TokenScores([], [], truncated, [] if ranks else None)
    ids = prompt_ids + cont_ids
    device = next(model.parameters()).device
    with torch.no_grad():
        logits = model(torch.tensor([ids], device=device)).logits[0]
    logprobs = torch.log_softmax(logits.float(), dim=-1)
    start = len(prompt_ids)
    # The token at position i is predicted by the logits at position i - 1; a continuation with
    # no prompt before it has no prediction for its first token, which is then left out.
    positions = range(max(start, 1), len(ids))
    targets = torch.tensor([ids[i] for i in positions], device=device)
    rows = torch.tensor([i - 1 for i in positions], device=device)
    picked = logprobs[rows, targets].tolist()
    pieces = tokenizer.convert_ids_to_tokens([ids[i] for i in positions])
    ranked: list[int] | None = None
    if ranks:
        scores = logits.float()[rows]
        own = scores.gather(1, targets[:, None])
        ranked = [int(r) for r in (1 + (scores > own).sum(dim=-1)).tolist()]
    offsets = [spans[i - start] for i in positions] if spans is not None else None
    return TokenScores(list(pieces), [float(x) for x in picked], truncated or start == 0, ranks=ranked, offsets=offsets)
