"""Training only the top layers without running the frozen ones every epoch.

With ``train_layers=N`` the lower layers never change, so their output for an example is the
same in every epoch. :class:`FrozenPrefix` runs them once per example (a forward pre-hook on the
first trained layer captures its input and stops the forward there), keeps those hidden states,
and trains from them with a view of the model whose layer stack holds only the top ``N`` layers,
fed the cached states as ``inputs_embeds``.

That view is exact for decoder stacks whose base model passes ``inputs_embeds`` straight to the
layers (Llama, Qwen, SmolLM2, Mistral...). :meth:`FrozenPrefix.check` compares it with the whole
model on real inputs; where it differs (a model that rescales its embeddings, say), training
falls back to full forwards.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Any

from ..errors import ConfigError

__all__ = ["FrozenPrefix", "layer_stack"]

logger = logging.getLogger(__name__)


class _Stop(Exception):
    """Ends a forward once the frozen layers are done."""


def layer_stack(model: Any) -> tuple[Any, str, Any]:
    """(parent module, attribute name, ModuleList) of the backbone's transformer layers."""
    import torch

    n_layers = model.config.num_hidden_layers
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) == n_layers and name:
            parent_name, _, attr = name.rpartition(".")
            return model.get_submodule(parent_name) if parent_name else model, attr, module
    raise ConfigError("cannot find the backbone's layer stack; train all layers instead (no --train-layers)")


class FrozenPrefix:
    """Caches the frozen layers' output and runs only the trained top layers."""

    def __init__(self, model: Any, train_layers: int) -> None:
        import torch

        self._torch = torch
        self.model = model
        self.parent, self.attr, self.stack = layer_stack(model)
        if not 0 < train_layers < len(self.stack):
            raise ValueError("a frozen prefix needs 0 < train_layers < the number of layers")
        self.first_trained = len(self.stack) - train_layers
        self.top = torch.nn.ModuleList(list(self.stack)[self.first_trained :])

    def features(self, ids: Any, mask: Any) -> Any:
        """The hidden states entering the first trained layer (no gradients)."""
        captured: list[Any] = []

        def hook(_module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            captured.append(args[0] if args else kwargs["hidden_states"])
            raise _Stop

        handle = self.stack[self.first_trained].register_forward_pre_hook(hook, with_kwargs=True)
        was_training = self.model.training
        self.model.eval()
        try:
            with self._torch.no_grad(), contextlib.suppress(_Stop):
                self.model(input_ids=ids, attention_mask=mask)
        finally:
            handle.remove()
            self.model.train(was_training)
        if not captured:
            raise ConfigError("the frozen layers' output could not be captured")
        return captured[0].detach()

    @contextlib.contextmanager
    def _top_only(self) -> Iterator[None]:
        setattr(self.parent, self.attr, self.top)
        try:
            yield
        finally:
            setattr(self.parent, self.attr, self.stack)

    def logits(self, hidden: Any, mask: Any) -> Any:
        """The model's logits from cached hidden states, through the top layers only."""
        with self._top_only():
            return self.model(inputs_embeds=hidden, attention_mask=mask).logits

    def check(self, ids: Any, mask: Any, atol: float = 1e-3) -> bool:
        """Whether the top-only view gives the whole model's logits on these inputs."""
        torch = self._torch
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.no_grad():
                whole = self.model(input_ids=ids, attention_mask=mask).logits.float()
                part = self.logits(self.features(ids, mask), mask).float()
        finally:
            self.model.train(was_training)
        keep = mask.bool()
        ok = bool(torch.allclose(whole[keep], part[keep], atol=atol, rtol=1e-3))
        if not ok:
            logger.info("cached frozen layers do not reproduce this model's logits; training with full forwards")
        return ok
