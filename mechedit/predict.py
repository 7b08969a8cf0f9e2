"""Next-token prediction: the top-k tokens after a prompt, as a typed result."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch

from mechedit import __version__
from mechedit.errors import ConfigError
from mechedit.interventions import run
from mechedit.models import model_info
from mechedit.tokens import Prefix, encode, str_tokens


@dataclass(frozen=True)
class Prediction:
    """Top-k next tokens after ``prompt`` (probabilities from the full softmax)."""

    model: str
    prompt: str
    prefix: str
    prompt_tokens: tuple[str, ...]
    token_ids: tuple[int, ...]
    tokens: tuple[str, ...]
    probs: tuple[float, ...]
    version: str = __version__

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_dataframe(self):
        import pandas as pd

        return pd.DataFrame({
            "rank": range(1, len(self.tokens) + 1), "token": self.tokens,
            "token_id": self.token_ids, "prob": self.probs,
        }).assign(model=self.model, prompt=self.prompt)


def predict(model: Any, prompt: str, *, top_k: int = 10, prefix: Prefix | str = Prefix.NONE) -> Prediction:
    """The ``top_k`` most likely next tokens after ``prompt``."""
    if top_k < 1:
        raise ConfigError(f"top_k must be >= 1, got {top_k}")
    enc = encode(model, prompt, prefix=prefix)
    device = next(model.parameters()).device
    logits = run(model, enc.tensor(device))
    probs = torch.softmax(logits[0, -1].double(), dim=-1)
    top = probs.topk(min(top_k, probs.shape[-1]))
    ids = [int(i) for i in top.indices]
    return Prediction(
        model=model_info(model).name, prompt=prompt, prefix=Prefix(prefix).value,
        prompt_tokens=tuple(str_tokens(model, enc.ids)), token_ids=tuple(ids),
        tokens=tuple(str_tokens(model, ids)), probs=tuple(float(p) for p in top.values),
    )
