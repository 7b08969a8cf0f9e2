"""What an edit optimises: write a new target, erase the true one, or amplify it.

Hase et al. (2023, "Does Localization Inform Editing?") study five editing problems;
three objectives cover them (the other two differ in their data, not their loss):

===================  ===========  ======================================================
problem              objective    teacher-forced tokens and per-token loss
===================  ===========  ======================================================
error injection      ``inject``   ``target_new``; ``-log p``
tracing reversal     ``inject``   ``target_new`` = the model's answer with the subject
                                  noised; ``-log p``
fact erasure         ``erase``    ``target_true``; ``-log(1 - p)`` (→ 0 as p → 0; the
                                  unbounded ``+log p`` would reward driving p to 1e-30)
fact amplification   ``amplify``  ``target_true``; ``-log p``
fact forcing         ``amplify``  ``target_true``; ``-log p``, subject noised during
                                  edit and evaluation
===================  ===========  ======================================================

Every editor config has an ``objective`` field; ``erase`` and ``amplify`` need requests
with ``target_true``. The per-token losses are averaged over a target's tokens.
"""

from __future__ import annotations

import torch
from jaxtyping import Float
from torch import Tensor

from mechedit.config import Choice
from mechedit.errors import ConfigError
from mechedit.requests import EditRequest


class Objective(Choice):
    INJECT = "inject"
    ERASE = "erase"
    AMPLIFY = "amplify"

    @classmethod
    def parse(cls, value: "Objective | str") -> "Objective":
        try:
            return cls(value)
        except ValueError:
            raise ConfigError(f"unknown objective {value!r}; known: {[o.value for o in cls]}") from None

    def target(self, request: EditRequest) -> str:
        """The target string this objective teacher-forces for ``request``."""
        if self is Objective.INJECT:
            return request.target_new
        if request.target_true is None:
            raise ConfigError(f"objective {self.value!r} needs requests with target_true "
                              f"(the fact to {self.value}); request {request.text!r} has none")
        return request.target_true

    def token_loss(self, logprobs: Float[Tensor, "n"]) -> Float[Tensor, "n"]:
        """Per-token loss from the log-probabilities of the target tokens."""
        if self is Objective.ERASE:
            # -log(1 - p), computed stably; p is clamped below 1 so the loss stays finite
            return -torch.log1p(-logprobs.exp().clamp(max=1 - 1e-6))
        return -logprobs
