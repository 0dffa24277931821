"""Validation under FSDP beyond the first process: which validator each process runs
(``validator_for``), and the other processes' part (``ValidationFollower``)."""
from __future__ import annotations

from ..outputs import VALIDATION_BEST
from .callbacks import TrainingRun
from .validation import Validator, sample


class ValidationFollower(Validator):
    """Validation in the other processes under FSDP: a sharded UNet samples only when every process
    runs the same sampling in step, so they make the first process's images at the same steps and
    write and score nothing; with ``--keep-best`` they take part in gathering the weights the first
    process keeps."""

    def start(self) -> None:
        return self.validate(0) if self.run.step == 0 else None

    def validate(self, step: int) -> None:
        self.last_step = step
        sample(self.run, self.settings, None)
        if self._keeps(None):          # the first process kept this step's weights: gather them with it
            self.run.save_model(self.dir / VALIDATION_BEST)      # the first process writes

    def end(self, step: int) -> None:
        if step > 0 and step != self.last_step:
            self.validate(step)

    def best_weights(self) -> None:
        return None


def validator_for(run: TrainingRun, first: bool, sharded: bool) -> Validator | None:
    """The first process validates; under FSDP (``sharded``) the others sample along with it."""
    if first:
        return Validator(run, sharded=sharded)
    return ValidationFollower(run, sharded=sharded) if sharded else None
