"""``tessy predictor train``: a boundary classifier from annotated windows, on any HF backbone.

The model is ``AutoModelForTokenClassification`` with two labels (0 capability, 1 style) on the
backbone; the label at position ``j`` is the type of token ``j + 1`` (see
:mod:`tessy.predictor.labels`). Each example is one annotated window after its context, cut from
the left to ``max_length`` tokens (the window the predictor reads at inference); only positions
whose next token lies in the window are scored.

Windows are split by trace (never one trace on both sides) into train, validation and held-out
test sets. A plain torch loop (AdamW, linear warm-up and decay, gradient clipping) trains for
``epochs`` (or ``max_steps``), scores the validation set after each epoch, and keeps the weights
with the best validation F1 of the style class. ``train_layers`` trains only the top layers (and
the head), which makes CPU training affordable.

The output folder is a standard checkpoint (``save_pretrained`` model and tokenizer) plus:
``tessy_predictor.json`` (the card: data, backbone, settings, counts, validation and test
metrics, and the lexicon's test metrics for comparison) and ``heldout.jsonl`` (the test windows,
for ``tessy predictor eval``).
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import math
import random
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..boundary.classifier import ClassifierPredictor
from ..boundary.lexicon import LexiconPredictor
from ..boundary.token_model import HFTokenModel, resolve_device
from ..errors import ConfigError, DataError
from ..jsonl import JsonlWriter
from .evaluate import Metrics, evaluate_windows, hf_tokenize, read_windows
from .frozen import FrozenPrefix
from .labels import IGNORE, AnnotatedWindow, first_labelled, next_token_labels, token_types

__all__ = ["CARD_NAME", "HELDOUT_NAME", "TrainResult", "TrainSettings", "split_windows", "train_predictor"]

logger = logging.getLogger(__name__)

CARD_NAME = "tessy_predictor.json"
HELDOUT_NAME = "heldout.jsonl"


@dataclass(frozen=True)
class TrainSettings:
    """How to train (every field is recorded in the card)."""

    epochs: int = 3
    lr: float = 5e-5
    batch_size: int = 8
    #: Tokens per example (context and window), cut from the left: the inference window.
    max_length: int = 200
    val_fraction: float = 0.1
    test_fraction: float = 0.2
    seed: int = 0
    #: Train only the top N transformer layers and the head (None: all).
    train_layers: int | None = None
    max_steps: int | None = None
    warmup_fraction: float = 0.1
    weight_decay: float = 0.01
    #: Loss weight of the style class (style tokens are the minority).
    style_weight: float = 1.0
    threshold: float = 0.5
    device: str = "auto"
    #: With ``train_layers``, run the frozen layers once per example, not once per epoch.
    cache_frozen: bool = True

    def check(self) -> None:
        if self.epochs < 1 or self.batch_size < 1 or self.max_length < 2 or self.lr <= 0:
            raise ConfigError("epochs, batch_size >= 1, max_length >= 2 and lr > 0 are required")
        if not (
            0 <= self.val_fraction < 1 and 0 <= self.test_fraction < 1 and self.val_fraction + self.test_fraction < 1
        ):
            raise ConfigError("val_fraction and test_fraction must be in [0, 1) and leave some windows to train on")
        if self.train_layers is not None and self.train_layers < 0:
            raise ConfigError("train_layers must not be negative")


@dataclass
class TrainResult:
    output: Path
    card: dict[str, Any]
    history: list[dict[str, Any]] = field(default_factory=list)


@dataclass(frozen=True)
class _Example:
    ids: list[int]
    labels: list[int]


def split_windows(
    windows: Sequence[AnnotatedWindow], val_fraction: float, test_fraction: float, seed: int
) -> tuple[list[AnnotatedWindow], list[AnnotatedWindow], list[AnnotatedWindow]]:
    """Train, validation and test windows, split by a stable hash of the trace id."""
    train: list[AnnotatedWindow] = []
    val: list[AnnotatedWindow] = []
    test: list[AnnotatedWindow] = []
    for w in windows:
        h = int.from_bytes(hashlib.sha256(f"{seed}:{w.role}:{w.trace_id}".encode()).digest()[:8], "big") / 2**64
        (test if h < test_fraction else val if h < test_fraction + val_fraction else train).append(w)
    return train, val, test


def encode(window: AnnotatedWindow, tokenizer: Any, max_length: int) -> _Example | None:
    """Token ids and next-token labels of one window (``None`` when nothing is labelled)."""
    text = window.text
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids = list(enc["input_ids"])
    offsets = [(int(a), int(b)) for a, b in enc["offset_mapping"]]
    types = token_types(text, offsets, window.text_spans())
    labels = next_token_labels(types, first_labelled(text, offsets, window.offset))
    ids, labels = ids[-max_length:], labels[-max_length:]
    labels[-1] = IGNORE
    if all(label == IGNORE for label in labels):
        return None
    return _Example(ids, labels)


def _freeze(model: Any, train_layers: int | None) -> None:
    if train_layers is None:
        return
    from .frozen import layer_stack

    for p in model.parameters():
        p.requires_grad_(False)
    _, _, stack = layer_stack(model)
    trainable = list(stack)[len(stack) - train_layers :] if train_layers else []
    head = [m for name, m in model.named_children() if name != model.base_model_prefix]
    norm = getattr(model.base_model, "norm", None)
    for module in [*trainable, *head, *([norm] if norm is not None else [])]:
        for p in module.parameters():
            p.requires_grad_(True)


def _batches(examples: Sequence[_Example], size: int, pad_id: int, torch: Any) -> Iterator[tuple[Any, Any, Any]]:
    for i in range(0, len(examples), size):
        chunk = examples[i : i + size]
        n = max(len(e.ids) for e in chunk)
        ids = torch.full((len(chunk), n), pad_id, dtype=torch.long)
        labels = torch.full((len(chunk), n), IGNORE, dtype=torch.long)
        mask = torch.zeros((len(chunk), n), dtype=torch.long)
        for row, e in enumerate(chunk):
            ids[row, : len(e.ids)] = torch.tensor(e.ids)
            labels[row, : len(e.ids)] = torch.tensor(e.labels)
            mask[row, : len(e.ids)] = 1
        yield ids, mask, labels


class _Runner:
    """Logits for a batch of examples: whole forwards, or the top layers over cached features."""

    def __init__(self, model: Any, pad_id: int, device: str, prefix: FrozenPrefix | None) -> None:
        import torch

        self.torch, self.model, self.pad_id, self.device, self.prefix = torch, model, pad_id, device, prefix
        self.features: dict[int, Any] = {}  # id(example) -> its cached hidden states (on the CPU)

    def precompute(self, examples: Sequence[_Example], batch_size: int) -> None:
        if self.prefix is None:
            return
        for i in range(0, len(examples), batch_size):
            chunk = examples[i : i + batch_size]
            ids, mask, _ = next(_batches(chunk, len(chunk), self.pad_id, self.torch))
            hidden = self.prefix.features(ids.to(self.device), mask.to(self.device)).cpu()
            for row, e in enumerate(chunk):
                self.features[id(e)] = hidden[row, : len(e.ids)].clone()

    def batches(self, examples: Sequence[_Example], size: int) -> Iterator[tuple[Any, Any]]:
        """(logits, labels) per batch; logits carry gradients where the model is training."""
        torch = self.torch
        for i in range(0, len(examples), size):
            chunk = examples[i : i + size]
            ids, mask, labels = next(_batches(chunk, len(chunk), self.pad_id, torch))
            mask = mask.to(self.device)
            if self.prefix is not None and all(id(e) in self.features for e in chunk):
                width = ids.shape[1]
                hidden = torch.stack(
                    [torch.nn.functional.pad(self.features[id(e)], (0, 0, 0, width - len(e.ids))) for e in chunk]
                ).to(self.device)
                logits = self.prefix.logits(hidden, mask)
            else:
                logits = self.model(input_ids=ids.to(self.device), attention_mask=mask).logits
            yield logits, labels


def _score(runner: _Runner, examples: Sequence[_Example], settings: TrainSettings) -> Metrics:
    import torch

    metrics = Metrics()
    runner.model.eval()
    with torch.inference_mode():
        for logits, labels in runner.batches(examples, settings.batch_size * 2):
            style = torch.softmax(logits.float(), dim=-1)[..., 1].cpu() >= settings.threshold
            keep = labels != IGNORE
            metrics.add(labels[keep].tolist(), style[keep].int().tolist())
    runner.model.train()
    return metrics


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def train_predictor(
    data: Sequence[Path],
    backbone: str | Path,
    output: Path,
    settings: TrainSettings | None = None,
    *,
    progress: Callable[[dict[str, Any]], None] | None = None,
) -> TrainResult:
    """Train a boundary classifier on the annotated windows in ``data`` and save it to ``output``."""
    import torch

    from .backbone import load_backbone

    settings = settings or TrainSettings()
    settings.check()
    if output.exists() and not output.is_dir():
        raise ConfigError(f"the output {output} is a file; give a folder for the checkpoint")
    started = time.perf_counter()
    windows = read_windows(data)
    train_w, val_w, test_w = split_windows(windows, settings.val_fraction, settings.test_fraction, settings.seed)
    if not train_w:
        raise DataError(f"no training windows left after the split ({len(windows)} windows in all)")
    torch.manual_seed(settings.seed)
    model, tokenizer = load_backbone(backbone)
    device = resolve_device(settings.device)
    model.to(device)
    _freeze(model, settings.train_layers)
    pad_id = int(tokenizer.pad_token_id)
    train_x = [e for e in (encode(w, tokenizer, settings.max_length) for w in train_w) if e is not None]
    val_x = [e for e in (encode(w, tokenizer, settings.max_length) for w in val_w) if e is not None]
    if not train_x:
        raise DataError("no training window has a labelled position")

    prefix = None
    if settings.train_layers and settings.cache_frozen:
        from .frozen import layer_stack

        if settings.train_layers < len(layer_stack(model)[2]):
            prefix = FrozenPrefix(model, settings.train_layers)
            ids, mask, _ = next(_batches(train_x[:4], 4, pad_id, torch))
            if not prefix.check(ids.to(device), mask.to(device)):
                prefix = None
    runner = _Runner(model, pad_id, device, prefix)
    runner.precompute(train_x + val_x, settings.batch_size * 2)

    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=settings.lr, weight_decay=settings.weight_decay)
    steps_per_epoch = math.ceil(len(train_x) / settings.batch_size)
    total = steps_per_epoch * settings.epochs
    if settings.max_steps is not None:
        total = min(total, settings.max_steps)
    warmup = max(1, int(total * settings.warmup_fraction))
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min((s + 1) / warmup, max(0.0, (total - s) / max(1, total - warmup)))
    )
    loss_fn = torch.nn.CrossEntropyLoss(
        weight=torch.tensor([1.0, settings.style_weight], device=device), ignore_index=IGNORE
    )
    rng = random.Random(settings.seed)
    history: list[dict[str, Any]] = []
    best: tuple[float, int, dict[str, Any]] | None = None
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    step = 0
    model.train()
    for epoch in range(1, settings.epochs + 1):
        order = list(train_x)
        rng.shuffle(order)
        running = 0.0
        seen = 0
        for logits, labels in runner.batches(order, settings.batch_size):
            loss = loss_fn(logits.float().view(-1, 2), labels.to(device).view(-1))
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            running += loss.item()
            seen += 1
            if progress is not None:
                progress({"epoch": epoch, "step": step, "total_steps": total, "loss": loss.item()})
            if step >= total:
                break
        val = _score(runner, val_x, settings) if val_x else None
        entry: dict[str, Any] = {"epoch": epoch, "steps": step, "train_loss": round(running / max(seen, 1), 4)}
        if val is not None:
            entry["val"] = val.to_dict()
        history.append(entry)
        logger.info("epoch %d: %s", epoch, entry)
        if progress is not None:
            progress({"epoch": epoch, "step": step, "total_steps": total, "epoch_done": entry})
        f1 = val.f1 if val is not None else -float(epoch)  # without validation, the last epoch wins
        if best is None or f1 > best[0] or val is None:
            state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items() if k in trainable}
            best = (f1, epoch, state)
        if step >= total:
            break
    assert best is not None
    model.load_state_dict(best[2], strict=False)
    model.eval()

    output.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(output))
    tokenizer.save_pretrained(str(output))
    (output / HELDOUT_NAME).unlink(missing_ok=True)  # a fresh file, not an append to an old run's
    with JsonlWriter(output / HELDOUT_NAME) as heldout:
        for w in test_w:
            heldout.write(_record(w))

    test_metrics = lexicon_metrics = None
    if test_w:
        tokenize = hf_tokenize(tokenizer)
        predictor = ClassifierPredictor(
            HFTokenModel(model, tokenizer, device=device), window=settings.max_length, threshold=settings.threshold
        )
        test_metrics = evaluate_windows(test_w, predictor, tokenize).to_dict()
        lexicon_metrics = evaluate_windows(test_w, LexiconPredictor(), tokenize).to_dict()

    from ..version import __version__

    card = {
        "format": "tessy-predictor/1",
        "labels": {"0": "capability", "1": "style"},
        "semantics": "the label at position j is the type of token j + 1",
        "roles": sorted({w.role for w in windows}),
        "backbone": str(backbone),
        "model_type": model.config.model_type,
        "parameters": model.num_parameters(),
        "trainable_parameters": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "data": [{"path": str(p), "sha256": _sha256(p)} for p in data],
        "windows": {"all": len(windows), "train": len(train_w), "val": len(val_w), "test": len(test_w)},
        "examples": {"train": len(train_x), "val": len(val_x)},
        "labelled_positions": {
            "train": sum(sum(label != IGNORE for label in e.labels) for e in train_x),
            "train_style": sum(sum(label == 1 for label in e.labels) for e in train_x),
        },
        "settings": asdict(settings),
        "device": device,
        "cached_frozen_layers": prefix is not None,
        "steps": step,
        "best_epoch": best[1],
        "val": copy.deepcopy(history[best[1] - 1].get("val")) if history else None,
        "test": test_metrics,
        "lexicon_test": lexicon_metrics,
        "history": history,
        "tessy_version": __version__,
        "wall_s": round(time.perf_counter() - started, 1),
    }
    (output / CARD_NAME).write_text(json.dumps(card, indent=2) + "\n", encoding="utf-8")
    logger.info("saved the predictor to %s (best epoch %d)", output, best[1])
    return TrainResult(output, card, history)


def _record(w: AnnotatedWindow) -> dict[str, Any]:
    return {
        "trace_id": w.trace_id,
        "role": w.role,
        "window_index": w.window_index,
        "context": w.context,
        "window_text": w.window_text,
        "spans": [list(s) for s in w.spans],
    }
