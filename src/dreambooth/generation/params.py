"""The one parameter type of generation: what the WebUI's txt2img / img2img take, but the model.

Every image the project makes (``generate``, prompt matrix and X/Y/Z cells, class images, validation
images, DreamBench, the toy demo) is described by a :class:`GenerationParams`, checked by
:meth:`GenerationParams.check` (a one-line error naming the flag), and recorded in its PNG's infotext.
"""
from __future__ import annotations

import random
from dataclasses import dataclass, replace

from ..checks import MAX_SEED, check_seed, check_value
from ..errors import UserError
from .hires import HIRES_UPSCALERS, MAX_HIRES_SCALE, hires_target
from .masks import MASKED_CONTENT, MAX_MASK_BLUR, MAX_MASKED_PADDING
from .resizing import RESIZE_MODES
from .samplers import resolve

MAX_SIDE = 4096                 # pixels: no family draws sensibly beyond (each family's own limit is lower)
MAX_PROMPT_CHARS = 20_000        # a prompt or negative prompt: A1111 users write a few hundred tokens at most
# Largest --width/--height by the model's family (models.families); MAX_SIDE before one is loaded.
SIDE_LIMITS = {2048: "2048 (4096 for SDXL)", MAX_SIDE: "2048 (4096 for SDXL)"}
# documented in --help
RANGES = {"steps": (1, 1000), "batch_size": (1, 64), "batch_count": (1, 10_000), "clip_skip": (1, 12)}


def num_of(text: str, key: str) -> int:
    try:
        return int(text.strip())
    except ValueError:
        raise UserError(f"infotext: {key}: {text!r} is not a number") from None


@dataclass(frozen=True)
class GenerationParams:
    """One WebUI generation: everything but the model."""
    prompt: str
    negative_prompt: str = ""
    sampler: str = "Euler a"
    schedule: str = "Automatic"
    steps: int = 20
    cfg_scale: float = 7.0
    seed: int = -1                       # -1: a random seed; image i of a run gets seed + i
    width: int | None = None             # None: the model's default size (img2img: the init image's)
    height: int | None = None
    batch_size: int = 1
    batch_count: int = 1
    init_image: object = None            # path or PIL image: img2img
    strength: float = 0.75               # img2img / inpainting denoising strength
    resize_mode: str = "Just resize"     # img2img: how an init image of other proportions meets the size (RESIZE_MODES)
    mask: object = None                  # path or PIL image, white = repaint: inpainting
    mask_blur: int = 4                   # the WebUI's "Mask blur": the mask's edge feathered (px; 0: hard)
    only_masked: bool = False            # the WebUI's "Inpaint area: Only masked" (else "Whole picture")
    masked_padding: int = 32             # its "Only masked padding, pixels"
    masked_content: str = "original"     # its "Masked content": "original", "fill" (the colours around it), "latent noise" or "latent nothing"
    invert_mask: bool = False            # its "Mask mode: Inpaint not masked": repaint what the mask leaves
    eta: float | None = None             # the WebUI's eta: DDIM's (None: 0); the stochastic samplers draw at 1
    clip_skip: int = 1                   # the WebUI's "Clip skip": SD1's text encoder stops N layers from its end
    hires: bool = False                  # txt2img's "Hires. fix" (``hires``): upscaled and denoised again at ``strength``
    hires_scale: float = 2.0             # its "Upscale by"
    hires_width: int = 0                 # its "Resize width to" / "height to" (0: by hires_scale)
    hires_height: int = 0
    hires_steps: int = 0                 # its "Hires steps" (0: as many as ``steps``)
    hires_upscaler: str = "Latent"       # its "Upscaler" (HIRES_UPSCALERS)
    keep: int | None = None              # a replay: make the one batch, keep only its image ``keep`` (0-based)

    @property
    def denoising(self) -> float:
        """The strength img2img is run at: ``strength``, or where steps x strength is under one step (0 too),
        one step at the schedule's last, least noisy, timestep, as the WebUI runs it (an upscale with a
        denoising of 0 to 0.05 is a common recipe; with 1 step, that is its only one); diffusers would refuse it."""
        return self.strength if int(self.steps * self.strength) >= 1 else min(1.0, (1 + 1e-6) / self.steps)

    def replace(self, **changes) -> "GenerationParams":
        return replace(self, **changes)

    def check(self, max_side: int = MAX_SIDE) -> "GenerationParams":
        """Raise a one-line UserError for a value no generation can use; returns self. ``max_side``:
        the largest width or height the model's family draws sensibly."""
        for name, (low, high) in RANGES.items():
            check_value(f"--{name.replace('_', '-')}", getattr(self, name), int, low, high)
        check_seed("--seed", self.seed)
        last = self.seed + self.batch_size * self.batch_count - 1
        if self.seed != -1 and last > MAX_SEED:        # image i gets seed + i, and must be made again from it alone
            raise UserError(f"--seed {self.seed}: its {self.batch_size * self.batch_count} images would run to seed "
                            f"{last}, past the largest, {MAX_SEED}; give a smaller --seed")
        check_value("--cfg", self.cfg_scale, float, 0, 100)
        check_value("--strength", self.strength, float, 0, 1)
        check_value("--mask-blur", self.mask_blur, int, 0, MAX_MASK_BLUR)
        check_value("--masked-padding", self.masked_padding, int, 0, MAX_MASKED_PADDING)
        check_value("--only-masked", self.only_masked, bool)
        check_value("--invert-mask", self.invert_mask, bool)
        if self.resize_mode not in RESIZE_MODES:
            raise UserError(f"--resize-mode {self.resize_mode!r}: one of {', '.join(RESIZE_MODES)}")
        if self.masked_content not in MASKED_CONTENT:
            raise UserError(f"--masked-content {self.masked_content!r}: one of {', '.join(MASKED_CONTENT)}")
        for name in ("width", "height"):
            value = getattr(self, name)
            if value is not None:
                check_value(f"--{name}", value, int)
                if not 8 <= value <= max_side:     # the same range before the model loads and after
                    raise UserError(f"--{name} {value}: must be from 8 to {SIDE_LIMITS.get(max_side, max_side)}")
                if value % 8:
                    raise UserError(f"--{name} {value}: must be a multiple of 8")
        for name in ("prompt", "negative_prompt", "sampler", "schedule"):
            check_value(f"--{name.replace('_', '-')}", getattr(self, name), str)
        for name in ("prompt", "negative_prompt"):      # memory grows with a prompt's length: megabytes of it
            if len(getattr(self, name)) > MAX_PROMPT_CHARS:      # held gigabytes (a server's request, one line)
                raise UserError(f"--{name.replace('_', '-')}: {len(getattr(self, name)):,} characters; at most "
                                f"{MAX_PROMPT_CHARS:,} (the model reads 75 tokens at a time, a word or two each)")
        if self.keep is not None and not (self.batch_count == 1 and 0 <= self.keep < self.batch_size):
            raise UserError(f"infotext: Batch {self.keep + 1}/{self.batch_size}: not an image of one batch")
        if self.mask is not None and self.init_image is None:
            raise UserError("--mask needs --init-image (the image to inpaint)")
        inpainting_only = [flag for flag, used in (("--only-masked", self.only_masked), ("--invert-mask", self.invert_mask),
                                                   ("--masked-content", self.masked_content != "original")) if used]
        if self.mask is None and inpainting_only:
            raise UserError(f"{inpainting_only[0]} is for inpainting: give --init-image and --mask (white = repaint)")
        if self.resize_mode != "Just resize" and self.init_image is None:
            raise UserError("--resize-mode is for img2img: give --init-image")
        if self.resize_mode != "Just resize" and self.mask is not None and self.only_masked:
            raise UserError("--resize-mode with --only-masked: the image keeps the init image's size and proportions "
                            "there; leave one of them out")
        if self.hires:
            self._check_hires(max_side)
        else:
            fields = self.__dataclass_fields__
            given = [f"--{name.replace('_', '-')}" for name in fields
                     if name.startswith("hires_") and getattr(self, name) != fields[name].default]
            if given:
                raise UserError(f"{given[0]} is for the hires fix: give --hires too")
        row, _ = resolve(self.sampler, self.schedule)
        if self.eta is not None:
            check_value("--eta", self.eta, float, 0, 1)
            if row.eta == "one" and self.eta != 1:
                raise UserError(f"--eta {self.eta:g}: {row.name} draws its noise at eta 1 here (diffusers' sampler has "
                                "no other); DDIM takes any eta")
        return self

    def _check_hires(self, max_side: int) -> None:
        if self.init_image is not None:
            raise UserError("--hires is for txt2img (the WebUI's Hires. fix); img2img gives its size by --width/--height")
        check_value("--hires-scale", self.hires_scale, float, 1, MAX_HIRES_SCALE)
        check_value("--hires-steps", self.hires_steps, int, 0, RANGES["steps"][1])
        for name in ("hires_width", "hires_height"):
            check_value(f"--{name.replace('_', '-')}", getattr(self, name), int, 0, max_side)
            if getattr(self, name) % 8:
                raise UserError(f"--{name.replace('_', '-')} {getattr(self, name)}: must be a multiple of 8 (or 0)")
        if self.hires_upscaler not in HIRES_UPSCALERS:
            raise UserError(f"--hires-upscaler {self.hires_upscaler!r}: one of {', '.join(HIRES_UPSCALERS)}")
        if self.strength <= 0:
            raise UserError("--strength 0 with --hires: the second pass would change nothing; give it 0.3 to 0.8")
        if self.width is not None and self.height is not None:
            w, h = hires_target(self.width, self.height, self.hires_scale, self.hires_width, self.hires_height).size
            if max(w, h) > max_side:
                raise UserError(f"--hires: {self.width}x{self.height} upscaled is {w}x{h}, past this model's "
                                f"{max_side} px; lower --hires-scale")

    @property
    def passes(self) -> int:
        """Sampling passes an image takes: two with the hires fix."""
        return 2 if self.hires else 1

    @property
    def sampler_eta(self) -> float:
        """The eta the scheduler is given: DDIM's (0 unless set); the others take none (0)."""
        return (self.eta or 0.0) if resolve(self.sampler, self.schedule)[0].eta == "free" else 0.0

    def with_seed(self) -> "GenerationParams":
        """A random seed in place of -1 (the run's first seed, then fixed for every image)."""
        return self if self.seed != -1 else replace(self, seed=random.randrange(MAX_SEED + 2 - self.batch_size * self.batch_count))

    def seeds(self) -> list[list[int]]:
        """The seeds of each batch: image i of the run gets ``seed + i``."""
        n = self.batch_size
        return [[self.seed + b * n + k for k in range(n)] for b in range(self.batch_count)]

    def check_replayable(self, info: dict) -> None:
        """An img2img or inpainted image is made again only from its init image (and mask), which its
        infotext (``info``, parsed without the WebUI's defaults) cannot hold: a one-line error naming the
        flags when they are not given."""
        inpainted = any(key in info for key in ("Mask blur", "Mask mode", "Inpaint area", "Masked content"))
        img2img = inpainted or ("Denoising strength" in info and not any(k.startswith("Hires") for k in info))
        if img2img and (self.init_image is None or (inpainted and self.mask is None)):
            flags = "--init-image and --mask" if inpainted else "--init-image"
            raise UserError(f"an {'inpainted' if inpainted else 'img2img'} image (Denoising strength "
                            f"{info.get('Denoising strength', '?')}): give its {flags} to make it again")

    @classmethod
    def from_infotext(cls, info: dict, **overrides) -> "GenerationParams":
        """Parameters from a parsed infotext (``infotext.parse_generation_parameters``)."""
        def num(key, kind, default):
            try:
                return kind(info[key]) if key in info and info[key] != "" else default
            except (TypeError, ValueError):
                raise UserError(f"infotext: {key}: {info[key]!r} is not a number") from None
        if "Size" in info and "Size-1" not in info:          # (the parser splits only WIDTHxHEIGHT)
            raise UserError(f"infotext: Size: {info['Size']!r} is not WIDTHxHEIGHT")
        params = cls(
            prompt=info.get("Prompt", ""),
            negative_prompt=info.get("Negative prompt", ""),
            sampler=info.get("Sampler", "Euler a"),
            schedule=info.get("Schedule type", "Automatic") or "Automatic",
            steps=num("Steps", int, 20),
            cfg_scale=num("CFG scale", float, 7.0),
            seed=num("Seed", int, -1),
            width=num("Size-1", int, None),
            height=num("Size-2", int, None),
            strength=num("Denoising strength", float, 0.75),
            resize_mode=info.get("Resize mode", "Just resize"),
            mask_blur=num("Mask blur", int, 4),
            only_masked=info.get("Inpaint area") == "Only masked",
            masked_padding=num("Masked area padding", int, 32),
            masked_content=info.get("Masked content", "original"),
            invert_mask=info.get("Mask mode") == "Inpaint not masked",
            eta=num("Eta DDIM", float, None),
            clip_skip=num("Clip skip", int, 1),
            hires="Hires upscaler" in info or "Hires upscale" in info or num("Hires resize-1", int, 0) > 0,
            hires_scale=num("Hires upscale", float, 2.0),
            hires_width=num("Hires resize-1", int, 0),
            hires_height=num("Hires resize-2", int, 0),
            hires_steps=num("Hires steps", int, 0),
            hires_upscaler=info.get("Hires upscaler", "Latent"),
        )
        # "Batch: 3/4": made as the third image of a batch of 4; remade by replaying that batch, since a
        # batch's images differ from the same seeds made alone by rounding. Not when the seed or the
        # batch is given anew.
        position = str(info.get("Batch", ""))
        if "/" in position and not {"seed", "batch_size", "batch_count"} & set(overrides):
            k, n = (num_of(part, "Batch") for part in position.split("/", 1))
            if n > 1 and 1 <= k <= n and params.seed >= 0:
                params = replace(params, seed=params.seed - (k - 1), batch_size=n, batch_count=1, keep=k - 1)
        return replace(params, **overrides)
