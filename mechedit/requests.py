"""Edit requests: "make the model say *target_new* after *prompt* about *subject*".

A request holds a prompt template with ``{}`` where the subject goes (CounterFact's
``requested_rewrite`` form), the subject, the new target and optionally the true one.
:meth:`EditRequest.validate` checks it against a model (subject found after
tokenisation, targets non-empty) before any computation, with messages that say what
to fix.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from mechedit.errors import ConfigError
from mechedit.tokens import Prefix, subject_span, target_ids


@dataclass(frozen=True)
class EditRequest:
    """One fact to write: ``prompt.format(subject)`` should continue with ``target_new``."""

    prompt: str
    subject: str
    target_new: str
    target_true: str | None = None
    case_id: str | int | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.prompt, str) or self.prompt.count("{}") != 1:
            raise ConfigError(
                f"prompt template must contain exactly one '{{}}' where the subject goes, got {self.prompt!r} "
                "(e.g. '{} is located in the city of')"
            )
        if not isinstance(self.subject, str) or not self.subject.strip():
            raise ConfigError(f"subject must be a non-empty string, got {self.subject!r}")
        if not isinstance(self.target_new, str) or not self.target_new.strip():
            raise ConfigError(f"target_new must be a non-empty string, got {self.target_new!r}")
        if self.target_true is not None and not self.target_true.strip():
            raise ConfigError("target_true, when given, must be a non-empty string")
        if self.target_true is not None and self.target_new.strip() == self.target_true.strip():
            raise ConfigError(f"target_new equals target_true ({self.target_new!r}): an edit must change the "
                              "fact; give another target_new, or objective 'amplify' to strengthen the true one")

    @property
    def text(self) -> str:
        """The prompt with the subject filled in."""
        return self.prompt.format(self.subject)

    def validate(self, model: Any, *, prefix: Prefix | str = Prefix.NONE) -> None:
        """Raise before any computation if the model cannot take this request."""
        subject_span(model, self.text, self.subject, prefix=prefix)
        target_ids(model, self.text, self.target_new)
        if self.target_true is not None:
            target_ids(model, self.text, self.target_true)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "EditRequest":
        return cls(**{k: d[k] for k in ("prompt", "subject", "target_new", "target_true", "case_id") if k in d})
