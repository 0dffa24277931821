"""What a resume with another run length or warm-up does to the learning-rate schedule.

diffusers' schedules are a rule of the step, the warm-up and the run's length: a resume rebuilds the
rule from this run's ``--max-steps`` and ``--lr-warmup-steps`` and applies it from the resumed step
(``checkpoint.resume_run``). A cosine or linear decay then jumps at once to where the new length puts
that step, so a change is said with the rate before and after. Checkpoints record both settings
since 2026-12; older ones do not, and nothing is said for them."""
from __future__ import annotations

SCHEDULE_SETTINGS = ("max_steps", "lr_warmup_steps")
BY_LENGTH = ("linear", "cosine")        # the schedules whose rule depends on --max-steps


def schedule_change(saved: dict, config, step: int, was: list | None, now: list) -> str | None:
    """The warning for a resume at ``step`` whose schedule settings differ from the checkpoint's
    (``saved``), with the first group's rate there (``was``: the checkpoint's, ``now``: recomputed)."""
    changed = [key for key in SCHEDULE_SETTINGS if key in saved and str(saved[key]) != str(getattr(config, key))
               and (key != "max_steps" or config.lr_scheduler in BY_LENGTH)]
    if not changed:
        return None
    said = " and ".join(f"--{key.replace('_', '-')} {getattr(config, key)} (was {saved[key]})" for key in changed)
    jump = f"; the rate there goes from {was[0]:.3g} to {now[0]:.3g}" if was and now and \
        f"{was[0]:.3g}" != f"{now[0]:.3g}" else ""
    return (f"--resume: {said} {'changes' if len(changed) == 1 else 'change'} the {config.lr_scheduler} learning-rate "
            f"schedule: it is recomputed for {config.max_steps} steps with {config.lr_warmup_steps} of warm-up and "
            f"applied from the resumed step {step}{jump}")
