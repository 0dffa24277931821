"""WebUI sampler names and schedule types, mapped onto diffusers schedulers.

No sampler is written here: every name is a diffusers scheduler class plus constructor options,
built from the model's own scheduler config (so betas, prediction type and SDXL/SD2 settings carry
over). The table below is the whole mapping; ``dreambooth generate --list-samplers`` prints it.

Schedule types (the WebUI's "Schedule type"):

* ``Automatic``: the sampler's WebUI default. For the k-diffusion samplers the WebUI uses either the
  model's own sigmas evenly spaced in time (Euler, Euler a, LMS, Heun: diffusers
  ``timestep_spacing="linspace"``), or Karras / Exponential sigmas (see the table). DDIM, PLMS
  and UniPC keep the timestep spacing of the model's scheduler config; LCM spaces its own steps
  (its distillation's), whatever the spacing, so it takes no other schedule type.
* ``Uniform``: the model's sigmas evenly spaced in time (``timestep_spacing="linspace"``).
* ``Karras``, ``Exponential``, ``Beta``: ``use_karras_sigmas`` / ``use_exponential_sigmas`` /
  ``use_beta_sigmas`` (Beta needs scipy).
* ``SGM Uniform``: ``timestep_spacing="trailing"`` (diffusers' documented equivalent).

A pair the scheduler cannot do is a one-line error that lists the schedules it can.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, field

import numpy as np
import torch

from ..errors import UserError

SCHEDULES = ("Automatic", "Uniform", "Karras", "Exponential", "SGM Uniform", "Beta")

_SCHEDULE_OPTIONS = {
    "Uniform": {"timestep_spacing": "linspace"},
    "Karras": {"use_karras_sigmas": True},
    "Exponential": {"use_exponential_sigmas": True},
    "SGM Uniform": {"timestep_spacing": "trailing"},
    "Beta": {"use_beta_sigmas": True},
}
_SIGMAS = ("Karras", "Exponential", "Beta")
_SPACINGS = ("Uniform", "SGM Uniform")
_ALL = ("Automatic", *_SPACINGS, *_SIGMAS)


@dataclass(frozen=True)
class Sampler:
    name: str                         # the WebUI name
    scheduler: str                    # diffusers class
    options: dict = field(default_factory=dict)
    automatic: str | None = None      # what "Automatic" means: a schedule label, or None = model config
    schedules: tuple = _ALL           # schedule types this scheduler can do
    aliases: tuple = ()
    note: str = ""
    # The WebUI's eta: "free" (DDIM's, 0 unless given), "one" (the stochastic samplers draw at 1:
    # diffusers' have no other), "" (a deterministic sampler: eta changes nothing, as in the WebUI)
    eta: str = ""


_MULTISTEP = "DPMSolverMultistepScheduler"
_SINGLESTEP = "DPMSolverSinglestepScheduler"
_EULER_A = "EulerAncestralDiscreteScheduler"

SAMPLERS: tuple[Sampler, ...] = (
    Sampler("DPM++ 2M", _MULTISTEP, {"algorithm_type": "dpmsolver++", "solver_order": 2}, "Karras",
            aliases=("k_dpmpp_2m",)),
    Sampler("DPM++ SDE", "DPMSolverSDEScheduler", {}, "Karras", schedules=("Automatic", "Uniform", *_SIGMAS),
            aliases=("k_dpmpp_sde",), eta="one"),
    Sampler("DPM++ 2M SDE", _MULTISTEP, {"algorithm_type": "sde-dpmsolver++", "solver_order": 2}, "Exponential",
            aliases=("k_dpmpp_2m_sde",), note="Gaussian noise where the WebUI uses Brownian-tree noise", eta="one"),
    Sampler("DPM++ 2M SDE Heun", _MULTISTEP,
            {"algorithm_type": "sde-dpmsolver++", "solver_order": 2, "solver_type": "heun"}, "Exponential",
            aliases=("k_dpmpp_2m_sde_heun",), note="Gaussian noise where the WebUI uses Brownian-tree noise",
            eta="one"),
    Sampler("DPM++ 2S a", _SINGLESTEP, {"algorithm_type": "sde-dpmsolver++", "solver_order": 2,
                                        "lower_order_final": True}, "Karras",
            schedules=("Automatic", "Uniform", *_SIGMAS), aliases=("k_dpmpp_2s_a",),
            note="nearest equivalent: single-step 2nd-order SDE DPM-Solver++ (diffusers has no 2S ancestral)",
            eta="one"),
    Sampler("DPM++ 3M SDE", _MULTISTEP, {"algorithm_type": "sde-dpmsolver++", "solver_order": 3}, "Exponential",
            aliases=("k_dpmpp_3m_sde",), note="Gaussian noise where the WebUI uses Brownian-tree noise", eta="one"),
    Sampler("Euler a", _EULER_A, {}, "Uniform", schedules=("Automatic", *_SPACINGS, "Karras", "Exponential"),
            aliases=("k_euler_a", "k_euler_ancestral"),
            note="Karras/Exponential sigmas applied by a thin subclass (diffusers' class has no option)", eta="one"),
    Sampler("Euler", "EulerDiscreteScheduler", {}, "Uniform", aliases=("k_euler",)),
    Sampler("LMS", "LMSDiscreteScheduler", {}, "Uniform", aliases=("k_lms",)),
    Sampler("Heun", "HeunDiscreteScheduler", {}, "Uniform", aliases=("k_heun",)),
    Sampler("DPM2", "KDPM2DiscreteScheduler", {}, "Karras", aliases=("k_dpm_2",)),
    Sampler("DPM2 a", "KDPM2AncestralDiscreteScheduler", {}, "Karras", aliases=("k_dpm_2_a",), eta="one"),
    Sampler("DDIM", "DDIMScheduler", {"clip_sample": False, "set_alpha_to_one": False}, None,
            schedules=("Automatic", *_SPACINGS), aliases=("ddim",), eta="free"),
    Sampler("PLMS", "PNDMScheduler", {"skip_prk_steps": True, "set_alpha_to_one": False}, None,
            schedules=("Automatic", *_SPACINGS), aliases=("plms", "pndm")),
    Sampler("UniPC", "UniPCMultistepScheduler", {}, None, aliases=("unipc",)),
    Sampler("LCM", "LCMScheduler", {}, None, schedules=("Automatic",), aliases=("lcm",),      # (it spaces its own steps)
            note="meant for LCM-distilled models or an LCM LoRA: 4-8 steps, CFG 1-2"),
)

_BY_NAME = {}
for _s in SAMPLERS:
    for _key in (_s.name, *_s.aliases):
        _BY_NAME[_key.lower()] = _s

# WebUI < 1.9 wrote the schedule into the sampler name: "DPM++ 2M Karras", "DPM++ 2M SDE Exponential".
_LEGACY_SUFFIXES = {" karras": "Karras", " exponential": "Exponential"}


def sampler_names() -> list[str]:
    return [s.name for s in SAMPLERS]


def _schedule_label(schedule: str) -> str | None:
    wanted = str(schedule).strip().lower().replace("_", " ")
    for label in SCHEDULES:
        if label.lower() == wanted:
            return label
    return None


def resolve(sampler: str, schedule: str = "Automatic") -> tuple[Sampler, str]:
    """The table row for a sampler name and the canonical schedule label, or a one-line UserError.

    Accepts the WebUI's names case-insensitively, its API aliases (``k_dpmpp_2m``) and the old
    combined names (``DPM++ 2M Karras``: the schedule then comes from the name when ``schedule`` is
    Automatic).
    """
    key = str(sampler).strip().lower()
    row = _BY_NAME.get(key)
    if row is None:
        for suffix, label in _LEGACY_SUFFIXES.items():
            if key.endswith(suffix) and key[: -len(suffix)] in _BY_NAME:
                row = _BY_NAME[key[: -len(suffix)]]
                if _schedule_label(schedule) in (None, "Automatic"):
                    schedule = label
                break
    if row is None:
        raise UserError(f"--sampler {sampler}: unknown; valid: {', '.join(sampler_names())}")
    label = _schedule_label(schedule)
    if label is None:
        raise UserError(f"--schedule {schedule}: unknown; valid: {', '.join(SCHEDULES)}")
    if label not in row.schedules:
        raise UserError(f"--schedule {label}: not available with sampler {row.name}; "
                        f"allowed: {', '.join(row.schedules)}")
    return row, label


def _effective(row: Sampler, label: str) -> str | None:
    return row.automatic if label == "Automatic" else label


class EulerAncestralWithSigmas:
    """Mixin for diffusers' Euler a: after the usual ``set_timesteps``, replace its sigmas with a
    Karras or exponential ramp between the same end points, and the timesteps with the (fractional)
    model times of those sigmas, as EulerDiscreteScheduler does for its own options."""

    sigma_ramp: str = "karras"

    def set_timesteps(self, num_inference_steps: int, device=None):
        super().set_timesteps(num_inference_steps, device)
        sigmas = self.sigmas[:-1].double().numpy()
        hi, lo = float(sigmas[0]), float(sigmas[-1])
        ramp = np.linspace(0, 1, num_inference_steps)
        if self.sigma_ramp == "karras":
            rho = 7.0
            new = (hi ** (1 / rho) + ramp * (lo ** (1 / rho) - hi ** (1 / rho))) ** rho
        else:
            new = np.exp(np.log(hi) + ramp * (np.log(lo) - np.log(hi)))
        all_sigmas = (((1 - self.alphas_cumprod) / self.alphas_cumprod) ** 0.5).double().numpy()
        times = np.interp(np.log(new), np.log(all_sigmas), np.arange(len(all_sigmas)))
        self.sigmas = torch.from_numpy(np.concatenate([new, [0.0]]).astype(np.float32))
        self.timesteps = torch.from_numpy(times.astype(np.float32)).to(device=device)


def _euler_ancestral_class(ramp: str):
    from diffusers import EulerAncestralDiscreteScheduler
    return type(f"EulerAncestral{ramp.title()}Scheduler", (EulerAncestralWithSigmas, EulerAncestralDiscreteScheduler),
                {"sigma_ramp": ramp})


def make_scheduler(base_config, sampler: str, schedule: str = "Automatic", seeds: list[int] | None = None):
    """A fresh diffusers scheduler for ``sampler`` + ``schedule``, from the model's scheduler config.
    ``seeds``: the images' seeds, for samplers that draw their noise from a seeded Brownian tree
    (one tree per image)."""
    import diffusers
    row, label = resolve(sampler, schedule)
    effective = _effective(row, label)
    options = dict(row.options)
    if seeds is not None and row.scheduler == "DPMSolverSDEScheduler":
        options["noise_sampler_seed"] = list(seeds)
    class_name = row.scheduler
    if effective is None:
        pass                                            # the model's own config
    elif class_name == _EULER_A and effective in ("Karras", "Exponential"):
        options["timestep_spacing"] = "linspace"
        return _euler_ancestral_class(effective.lower()).from_config(base_config, **options)
    else:
        if effective in _SIGMAS:
            options["timestep_spacing"] = "linspace"
        options.update(_SCHEDULE_OPTIONS[effective])
    if class_name == _SINGLESTEP:
        options.pop("timestep_spacing", None)          # always evenly spaced in time
    cls = getattr(diffusers, class_name)
    config = {k: v for k, v in dict(base_config).items()
              if not k.startswith("use_") or k in ("use_dynamic_shifting",)}
    return _refusing_nan_steps(cls.from_config(config, **options), row.name)


def _refusing_nan_steps(scheduler, name: str):
    """A scheduler whose steps hold NaN (diffusers' DPM2 a at 2 steps: its ancestral step leaves no
    sigma to interpolate to, and log(0) becomes NaN) would make a black picture: a one-line error."""
    set_timesteps = scheduler.set_timesteps

    @functools.wraps(set_timesteps)
    def checked(num_inference_steps=None, *args, **kwargs):
        set_timesteps(num_inference_steps, *args, **kwargs)
        steps = [getattr(scheduler, k, None) for k in ("timesteps", "sigmas")]
        if any(isinstance(t, torch.Tensor) and t.is_floating_point() and torch.isnan(t).any() for t in steps):
            raise UserError(f"--sampler {name} at {num_inference_steps} steps: diffusers' scheduler has no valid "
                            "steps for so few (they come out NaN, a black picture); give more steps")

    scheduler.set_timesteps = checked
    return scheduler


def sampler_table() -> str:
    """The table printed by ``--list-samplers``."""
    rows = [("Sampler", "diffusers scheduler", "Automatic =", "Schedule types", "Notes")]
    for s in SAMPLERS:
        opts = ", ".join(f"{k}={v}" for k, v in s.options.items()
                         if k not in ("clip_sample", "set_alpha_to_one", "lower_order_final"))
        cls = s.scheduler + (f" ({opts})" if opts else "")
        rows.append((s.name, cls, s.automatic or "model config", ", ".join(x for x in s.schedules if x != "Automatic"),
                     s.note))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = []
    for k, r in enumerate(rows):
        lines.append(("  ".join(c.ljust(w) for c, w in zip(r[:4], widths)) + "  " + r[4]).rstrip())
        if k == 0:
            lines.append("  ".join("-" * w for w in widths) + "  -----")
    return "\n".join(lines)
