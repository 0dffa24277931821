"""Prompt matrix and X/Y/Z plots, as in the WebUI's scripts, with labelled grid images.

* Prompt matrix: ``"a dog|in the snow|oil painting"`` is the first part plus every subset of the
  others, ``2**(n-1)`` prompts, all with one seed. The grid has the first half of the variable
  parts across (one column per on/off combination) and the rest down; each header lists its
  parts, the ones that are off greyed and struck through.
* X/Y/Z plot: each axis is ``"Name: v1, v2, ..."`` over a generation parameter (``AXES``); numeric
  axes take ranges (``10-30 (+10)``, ``1-2 [5]``). ``Prompt S/R: dog, cat`` searches the prompt for
  the first value and replaces it by each value in turn. X runs across, Y down, and each Z value
  makes a grid of its own, placed side by side under a Z header.

Every image is saved as usual (``NNNNN-<seed>.png`` with infotext) and the grid as
``grid-NNNNN-<seed>.png``, carrying the first image's infotext (an X/Y/Z plot's with the plot's own keys,
as A1111's script writes them: ``--from-image`` of the grid makes the plot again).
"""
from __future__ import annotations

import csv
import itertools
import re
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from .. import progress
from ..errors import UserError
from ..grid import annotated_grid
from ..images import write_png
from ..outputs import GRID_PREFIX, claim_numbered
from .hires import HIRES_UPSCALERS, hires_target, upscaler_named
from .params import GenerationParams
from .pipeline import GenerationPipeline
from .samplers import SCHEDULES, resolve
from .sampling import Controls, GeneratedImage, generate, resolve_params
from .xyz_infotext import plot_infotext

# A plot or a matrix past this many images is a range or a '|' typed too long, not a plan: refused
# before anything is made (a Seed range of 10**8 values once took the machine's whole memory, silently).
MAX_PLOT_IMAGES = 10_000


# The WebUI's grid limit (its option "img_max_size_mp"): a grid past it would take gigabytes to write.
MAX_GRID_PIXELS = 200_000_000


def cell_size(params: GenerationParams) -> tuple[int, int]:
    """The size of a cell's image (size resolved): a hires pass's target, else the size."""
    if params.hires:
        return hires_target(params.width, params.height, params.hires_scale, params.hires_width,
                            params.hires_height).size
    return params.width, params.height


def check_grid_pixels(columns: int, rows: int, cells: list[GenerationParams], what: str) -> None:
    """A grid of ``columns`` x ``rows`` cells as large as the largest of ``cells``: past the limit, refused."""
    width, height = (max(side) for side in zip(*map(cell_size, cells)))
    pixels = columns * rows * width * height
    if pixels > MAX_GRID_PIXELS:
        raise UserError(f"{what}: a grid of {columns} x {rows} cells at this size is {pixels / 1e6:,.0f} megapixels; "
                        f"at most {MAX_GRID_PIXELS // 1_000_000} (fewer values, or a smaller size)")


def _settings(axis: "Axis") -> set[str]:
    """The generation settings an axis sets."""
    t = axis.type
    if t.label == "Size":
        return {"width", "height"}
    if t.label == "Prompt S/R":
        return {"prompt S/R " + str(axis.values[0])}      # two S/R axes on different words are fine
    combined = t.label == "Sampler" and any(resolve(str(v))[1] != "Automatic" for v in axis.values)
    return {t.field, *(["schedule"] if combined else [])}


def check_plot_size(cells: int, params: GenerationParams, what: str) -> None:
    images = cells * params.batch_size * params.batch_count
    if images > MAX_PLOT_IMAGES:
        raise UserError(f"{what}: {cells:,} cells x {params.batch_size * params.batch_count} images each is {images:,} "
                        f"images; a plot makes at most {MAX_PLOT_IMAGES:,}")


# ----------------------------------------------------------------------------------------------
# Prompt matrix
# ----------------------------------------------------------------------------------------------


def prompt_matrix_prompts(prompt: str) -> tuple[list[str], list[str]]:
    """(prompts, variable parts): the first ``|`` part joined with each subset of the others;
    prompt ``k`` holds variable part ``j`` when bit ``j`` of ``k`` is set."""
    parts = prompt.split("|")
    base = parts[0].strip()
    variable = [p.strip().strip(",").strip() for p in parts[1:]]
    if 2 ** len(variable) > MAX_PLOT_IMAGES:
        raise UserError(f"--prompt-matrix: {len(variable)} '|' parts make {2 ** len(variable):,} prompts; "
                        f"a matrix makes at most {MAX_PLOT_IMAGES:,} images ({MAX_PLOT_IMAGES.bit_length() - 1} parts)")
    prompts = []
    for k in range(2 ** len(variable)):
        chosen = [v for j, v in enumerate(variable) if k & (1 << j)]
        prompts.append(", ".join([base, *chosen]) if base else ", ".join(chosen))
    return prompts, variable


@dataclass
class GridResult:
    images: list[GeneratedImage]
    grid: object                  # PIL image
    grid_path: Path | None


def _save_grid(grid, output_dir: Path | None, first: GeneratedImage, infotext: str | None = None) -> Path | None:
    """``grid-NNNNN-<seed>.png`` with ``infotext`` (by default the first cell's)."""
    if output_dir is None:
        return None
    return write_png(grid, claim_numbered(output_dir, first.seed, prefix=GRID_PREFIX), infotext or first.infotext)

def _skipped_cell(made: list, params: GenerationParams):
    """A cell skipped before its first step ended (a server's Skip): left blank, and the plot goes on."""
    from PIL import Image
    return Image.new("RGB", made[-1].size if made else (params.width or 512, params.height or 512), "gray")


def _interrupted(controls: Controls | None) -> bool:
    return controls is not None and controls.stop() == "interrupt"


def run_prompt_matrix(pipeline: GenerationPipeline, params: GenerationParams, output_dir: Path | None = None,
                      fast_batches: bool = True, controls: Controls | None = None) -> GridResult:
    """``controls``: a server's interrupt, skip and previews; an interrupted matrix keeps its images
    and makes no grid."""
    prompts, variable = prompt_matrix_prompts(params.prompt)
    if not variable:
        raise UserError("--prompt-matrix: the prompt has no '|'; write it as 'base|part 1|part 2'")
    check_plot_size(len(prompts), params, "--prompt-matrix")
    params, _, _ = resolve_params(pipeline, params)            # one seed and size for every cell
    results, cells = [], []
    with progress.task("prompt matrix", len(prompts) * params.batch_size * params.batch_count * params.passes) as bar:
        for prompt in prompts:
            got = [] if _interrupted(controls) else generate(pipeline, replace(params, prompt=prompt), output_dir,
                                                             fast_batches=fast_batches, task=bar, controls=controls)
            if not got and _interrupted(controls):
                return GridResult(results, None, None)
            results += got
            cells.append(got[0].image if got else _skipped_cell(cells, params))
    across = (len(variable) + 1) // 2
    cols = 2 ** across
    col_labels = [[(v, bool(c & (1 << j))) for j, v in enumerate(variable[:across])] for c in range(cols)]
    row_labels = [[(v, bool(r & (1 << j))) for j, v in enumerate(variable[across:])]
                  for r in range(2 ** (len(variable) - across))]
    grid = annotated_grid(cells, cols, col_labels, row_labels)
    return GridResult(results, grid, _save_grid(grid, output_dir, results[0]) if results else None)



# ----------------------------------------------------------------------------------------------
# X/Y/Z axes
# ----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class AxisType:
    label: str
    kind: type                    # int, float or str
    field: str | None             # GenerationParams field set by the value (None: special)
    aliases: tuple = ()


AXES: tuple[AxisType, ...] = (
    AxisType("Seed", int, "seed"),
    AxisType("Steps", int, "steps"),
    AxisType("CFG scale", float, "cfg_scale", ("cfg",)),
    AxisType("Sampler", str, "sampler"),
    AxisType("Schedule type", str, "schedule", ("schedule", "scheduler")),
    AxisType("Prompt S/R", str, None, ("prompt sr", "prompt s/r", "s/r")),
    AxisType("Negative prompt", str, "negative_prompt"),
    AxisType("Width", int, "width"),
    AxisType("Height", int, "height"),
    AxisType("Size", str, None),
    AxisType("Denoising", float, "strength", ("denoising strength", "strength")),
    AxisType("Batch size", int, "batch_size"),
    AxisType("Clip skip", int, "clip_skip"),
    AxisType("Hires steps", int, "hires_steps"),
    AxisType("Hires upscaler", str, "hires_upscaler"),
)
_AXIS_BY_NAME = {}
for _a in AXES:
    for _n in (_a.label, *_a.aliases):
        _AXIS_BY_NAME[_n.lower()] = _a

_NUM = r"[+-]?\s*\d+(?:\.\d*)?"
_RANGE_STEP = re.compile(rf"^\s*({_NUM})\s*-\s*({_NUM})\s*(?:\(\s*([+-]\s*\d+(?:\.\d*)?)\s*\))?\s*$")
_RANGE_COUNT = re.compile(rf"^\s*({_NUM})\s*-\s*({_NUM})\s*\[\s*(\d+)\s*\]\s*$")
_SIZE = re.compile(r"^\s*(\d+)\s*[xX]\s*(\d+)\s*$")


@dataclass
class Axis:
    type: AxisType
    values: list

    def label_for(self, value) -> str:
        return str(value) if self.type.label == "Prompt S/R" else f"{self.type.label}: {_fmt(value)}"


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def _number(text: str, kind: type, flag: str, label: str):
    try:
        return kind(text.replace(" ", "")) if kind is float else int(text.replace(" ", ""))
    except ValueError:
        raise UserError(f"{flag} {label}: {text!r} is not {'an integer' if kind is int else 'a number'} (values are "
                        "separated by commas; a range is written 10-30 (+10) or 10-30 [5])") from None


def _check_count(count: int, item: str, flag: str, label: str) -> None:
    if count > MAX_PLOT_IMAGES:              # before the values are made: a long range is refused at once
        raise UserError(f"{flag} {label}: range {item!r} has {count:,} values; a plot makes at most "
                        f"{MAX_PLOT_IMAGES:,} images")


def _expand_numbers(items: list[str], kind: type, flag: str, label: str) -> list:
    values = []
    for item in items:
        m = _RANGE_COUNT.match(item)
        if m:
            a, b = (_number(x, float, flag, label) for x in m.group(1, 2))
            _check_count(int(m.group(3)), item, flag, label)
            seq = np.linspace(a, b, int(m.group(3)))
            values += [int(round(x)) for x in seq] if kind is int else [float(round(x, 8)) for x in seq]
            continue
        m = _RANGE_STEP.match(item)
        if m:
            a, b = (_number(x, kind, flag, label) for x in m.group(1, 2))
            step = _number(m.group(3), kind, flag, label) if m.group(3) else kind(1)
            if step == 0 or (b - a) * step < 0:
                raise UserError(f"{flag} {label}: range {item!r} never reaches its end")
            count = int(np.floor((b - a) / step + 1e-9)) + 1
            _check_count(count, item, flag, label)
            values += [kind(round(a + k * step, 8)) if kind is float else a + k * step for k in range(count)]
            continue
        values.append(_number(item, kind, flag, label))
    return values


def parse_axis(text: str, flag: str = "--x") -> Axis:
    """``"Name: v1, v2, ..."`` as an Axis, or a one-line UserError."""
    name, sep, rest = str(text).partition(":")
    axis_type = _AXIS_BY_NAME.get(name.strip().lower())
    if not sep or axis_type is None:
        raise UserError(f"{flag} {text!r}: expected 'Name: v1, v2, ...' with Name one of "
                        f"{', '.join(a.label for a in AXES)}")
    items = [v.strip() for v in next(csv.reader([rest], skipinitialspace=True), []) if v.strip()]
    if not items:
        raise UserError(f"{flag} {axis_type.label}: no values")
    label = axis_type.label
    if axis_type.kind in (int, float):
        values = _expand_numbers(items, axis_type.kind, flag, label)
    elif label == "Sampler":
        values = []
        for v in items:
            try:
                row, schedule = resolve(v)
            except UserError as exc:             # name the axis, not a --sampler flag not given
                raise UserError(f"{flag} Sampler: {v!r} {str(exc).split(': ', 1)[-1]}") from None
            # an old combined name ("LMS Karras") keeps its schedule: the cell is drawn as the name says
            values.append(row.name if schedule == "Automatic" else f"{row.name} {schedule}")
    elif label == "Schedule type":
        canon = {s.lower().replace("_", " "): s for s in SCHEDULES}
        bad = [v for v in items if v.lower().replace("_", " ") not in canon]
        if bad:
            raise UserError(f"{flag} Schedule type: {bad[0]!r} unknown; valid: {', '.join(SCHEDULES)}")
        values = [canon[v.lower().replace("_", " ")] for v in items]
    elif label == "Hires upscaler":
        bad = [v for v in items if upscaler_named(v) is None]
        if bad:
            raise UserError(f"{flag} Hires upscaler: {bad[0]!r} unknown; valid: {', '.join(HIRES_UPSCALERS)}")
        values = [upscaler_named(v) for v in items]
    elif label == "Size":
        for v in items:
            if not _SIZE.match(v):
                raise UserError(f"{flag} Size: {v!r} is not WIDTHxHEIGHT")
        values = [f"{int(_SIZE.match(v).group(1))}x{int(_SIZE.match(v).group(2))}" for v in items]
    else:
        values = items
    return Axis(axis_type, values)


def apply_axis(params: GenerationParams, axis: Axis, value, flag: str = "--x") -> GenerationParams:
    t = axis.type
    if t.label == "Prompt S/R":
        search = axis.values[0]
        if search not in params.prompt and search not in params.negative_prompt:
            raise UserError(f"{flag} Prompt S/R: {search!r} is not in the prompt")
        return replace(params, prompt=params.prompt.replace(search, value),
                       negative_prompt=params.negative_prompt.replace(search, value))
    if t.label == "Size":
        w, h = (int(x) for x in _SIZE.match(value).groups())
        return replace(params, width=w, height=h)
    return replace(params, **{t.field: value})


def run_xyz(pipeline: GenerationPipeline, params: GenerationParams, x: str | None = None, y: str | None = None,
            z: str | None = None, output_dir: Path | None = None, fast_batches: bool = True,
            controls: Controls | None = None) -> GridResult:
    """An X/Y/Z plot: one cell per value combination, one seed for all (unless Seed is an axis).
    ``controls``: as :func:`run_prompt_matrix`'s."""
    axes = []
    for flag, text in (("--x", x), ("--y", y), ("--z", z)):
        axes.append(parse_axis(text, flag) if text else None)
    if not any(axes):
        raise UserError("--x/--y/--z: give at least one axis, e.g. --x 'Sampler: Euler a, DDIM'")
    given = [(flag, axis) for flag, axis in zip(("--x", "--y", "--z"), axes) if axis is not None]
    for (flag_a, a), (flag_b, b) in itertools.combinations(given, 2):
        if _settings(a) & _settings(b):          # the later axis would overwrite the earlier's value, unlabelled
            raise UserError(f"{flag_b} {b.type.label}: sets what {flag_a} {a.type.label} sets; give each axis a "
                            "setting of its own")
    if any(a.type.label == "Denoising" for _, a in given) and not (params.hires or params.init_image):
        raise UserError("--x/--y/--z Denoising: the denoising strength acts on img2img (--init-image) or a hires "
                        "pass (--hires); every cell would be the same")
    if params.keep is not None and any(_settings(a) & {"seed", "batch_size"} for _, a in given):
        # a replayed batch image (--from-image) under new seeds or batches: the image alone, its own seed
        params = replace(params, seed=params.seed + params.keep, batch_size=1, batch_count=1, keep=None)
    params, _, _ = resolve_params(pipeline, params)       # fixes the seed (and default size) for all cells
    for axis in axes:                  # Seed -1 drawn once, here, so the label says what the cell was made with
        if axis is not None and axis.type.label == "Seed":
            axis.values = [v if v != -1 else replace(params, seed=-1).with_seed().seed for v in axis.values]
    ax_x, ax_y, ax_z = axes
    xs = ax_x.values if ax_x else [None]
    ys = ax_y.values if ax_y else [None]
    zs = ax_z.values if ax_z else [None]
    check_plot_size(len(xs) * len(ys) * len(zs), params, "--x/--y/--z")

    # Build and check every cell before generating anything.
    cells = {}
    for (iz, vz), (iy, vy), (ix, vx) in itertools.product(enumerate(zs), enumerate(ys), enumerate(xs)):
        p = params
        for flag, axis, value in (("--x", ax_x, vx), ("--y", ax_y, vy), ("--z", ax_z, vz)):
            if axis is not None:
                p = apply_axis(p, axis, value, flag)
                try:
                    p.check(pipeline.max_side)
                except UserError as exc:         # name the axis value, not a flag the user did not give
                    raise UserError(f"{flag} {axis.label_for(value)}: {exc}") from None
        cells[iz, iy, ix] = p
    check_grid_pixels(len(xs) * len(zs), len(ys), list(cells.values()), "--x/--y/--z")
    count = sum(p.batch_size * p.batch_count for p in cells.values())      # said once every cell is checked
    progress.message(f"X/Y/Z plot: {count} image{'s' if count != 1 else ''} in {len(xs)} x {len(ys)} cells"
                     + (f" x {len(zs)} grids" if ax_z else ""))

    results, images = [], {}
    with progress.task("X/Y/Z plot", sum(p.batch_size * p.batch_count * p.passes for p in cells.values())) as bar:
        for key, p in cells.items():
            got = [] if _interrupted(controls) else generate(pipeline, p, output_dir, fast_batches=fast_batches,
                                                             task=bar, controls=controls)
            if not got and _interrupted(controls):
                return GridResult(results, None, None)
            results += got
            images[key] = got[0].image if got else _skipped_cell(list(images.values()), p)

    grids = []
    for iz in range(len(zs)):
        cell_images = [images[iz, iy, ix] for iy in range(len(ys)) for ix in range(len(xs))]
        col_labels = [[(ax_x.label_for(v), True)] for v in xs] if ax_x else None
        row_labels = [[(ax_y.label_for(v), True)] for v in ys] if ax_y else None
        grids.append(annotated_grid(cell_images, len(xs), col_labels, row_labels))
    if ax_z is not None:
        grid = annotated_grid(grids, len(grids), [[(ax_z.label_for(v), True)] for v in zs], None, pad=8)
    else:
        grid = grids[0]
    info = plot_infotext(results[0].infotext, zip("XYZ", (x, y, z), axes)) if results else None
    return GridResult(results, grid, _save_grid(grid, output_dir, results[0], info) if results else None)
