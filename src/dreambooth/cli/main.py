"""``dreambooth`` entry point: one group, subcommands registered from sibling modules, and one
policy for errors: a user error is one line on stderr and exit code 2; ``--debug`` shows the
traceback instead."""
from __future__ import annotations

import os
import shlex
import sys

import click

from ..devices import first_process, out_of_gpu_memory
from ..errors import UserError, os_error_line
from ..models.loading import quiet_libraries
from ..sigterm import sigterm_as_ctrl_c, stop_with_launcher
from ..training.processes import peer_gone
from ..training.trainer import TrainingInterrupted
from ..terminal import close_display, show_progress
from . import evaluate, generate, pnginfo, serve, tokens, toy, train
from .peer_flags import flag_hint


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.option("--debug", is_flag=True, help="Show full tracebacks instead of one-line errors.")
def cli(debug: bool) -> None:
    """Personalise Stable Diffusion with DreamBooth: train, generate, evaluate."""


for _module in (train, tokens, generate, pnginfo, evaluate, toy, serve):
    _module.register(cli)

# What to try when a command runs out of GPU memory (training's preflight names its own before it starts)
GPU_MEMORY_FIXES = {
    "generate": "try --medvram, a smaller --batch-size, or a smaller --width/--height",
    "train": "the memory preflight's estimate fell short: try --gradient-checkpointing, --use-8bit-adam, "
             "a smaller --batch-size or --resolution",
}


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv or os.environ.get("DREAMBOOTH_DEBUG") == "1"
    argv = [a for a in argv if a != "--debug"]   # accepted anywhere on the line, not only before the command
    # accelerate launch starts one such process per device: bars and messages from the first only (the
    # others say only what is theirs alone, such as their share of the class images)
    show_progress(bars=None if first_process() else False, every_message=first_process())
    try:
        # the libraries' own bars and advice: ours say what matters (in the try: a Ctrl-C during these
        # imports, seconds long, is one line too)
        quiet_libraries()
        # kill, timeout, Slurm: a run stops as after Ctrl-C (accelerate launch passes SIGTERM on to each
        # process, and sends it to one whose launcher died); a server's are uvicorn's
        with sigterm_as_ctrl_c("serve" not in argv[:1]):
            if argv[:1] == ["train"] and "TORCHELASTIC_RUN_ID" in os.environ:   # torch's launcher (its main
                stop_with_launcher()                                   # thread starts the workers)
            cli.main(args=argv, prog_name="dreambooth", standalone_mode=False)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.exceptions.Abort as exc:   # click's name for Ctrl-C
        interrupted = exc.__cause__ if isinstance(exc.__cause__, TrainingInterrupted) else None
        # a command's own Ctrl-C says what it leaves (training: the checkpoint; generate: the images written)
        said = str(exc.__cause__) if isinstance(exc.__cause__, KeyboardInterrupt) else ""
        close_display()                      # the bars' line ended, so the message is a line of its own
        if first_process():                  # (every process was interrupted alike)
            click.echo(said or "aborted", err=True)
        if interrupted and interrupted.checkpoint is not None and first_process():
            click.echo(f"resume with: {resume_command(argv)}", err=True)
        sys.exit(130)
    except KeyboardInterrupt:
        if first_process():
            click.echo("interrupted", err=True)
        sys.exit(130)
    except click.UsageError as exc:
        if debug:
            raise
        where = f"dreambooth {exc.ctx.command_path.split(' ', 1)[-1]}: " if exc.ctx and " " in exc.ctx.command_path else ""
        hint = flag_hint(exc.ctx.command, exc.option_name) if isinstance(exc, click.NoSuchOption) \
            and exc.ctx is not None else None             # what other tools call our flags
        message = f"No such option: {exc.option_name}{hint}" if hint else exc.format_message()
        click.echo(f"error: {where}{message}", err=True)
        sys.exit(2)
    except UserError as exc:
        if debug:
            raise
        if first_process() or not getattr(exc, "said_by_first", False):    # several processes: once
            _say_error(str(exc))
            if getattr(exc, "checkpoint", None) is not None:                # another process stopped mid-run
                click.echo(f"resume with: {resume_command(argv)}", err=True)
        sys.exit(2)
    except OSError as exc:        # the file system's refusals, wherever they came from: one line
        if debug:
            raise
        _say_error(os_error_line(exc))
        sys.exit(2)
    except (MemoryError, RecursionError) as exc:
        if debug:
            raise
        _say_error(f"out of memory ({type(exc).__name__}); use smaller sizes or batches")
        sys.exit(2)
    except Exception as exc:      # a bug of ours or a library's: still one line, and how to see more
        if debug:
            raise
        if peer_gone(exc):        # the process that stopped says why; this one was waiting for it
            _say_error("stopped: another process of this run stopped (its message, or the launcher's, says why)")
            sys.exit(2)
        if out_of_gpu_memory(exc):
            command = next((a for a in argv if not a.startswith("-")), "")
            _say_error(f"out of GPU memory ({str(exc).splitlines()[0][:160]}); "
                       f"{GPU_MEMORY_FIXES.get(command, 'free GPU memory or use smaller sizes or batches')}")
            sys.exit(2)
        what = str(exc).splitlines()[0][:200] if str(exc) else ""
        _say_error(f"unexpected {type(exc).__name__}: {what} (dreambooth --debug ... shows where; please report it)")
        sys.exit(1)


def _say_error(text: str) -> None:
    """``error: ...`` on stderr; a process other than the first of several says which it is."""
    whose = "" if first_process() else f"process {os.environ.get('RANK')}: "
    click.echo(f"error: {whose}{text}", err=True)


def resume_command(argv: list[str]) -> str:
    """The command line that continues an interrupted ``train``: the same flags, ``--resume latest``
    in place of any ``--resume``, no ``--overwrite`` (the checkpoint is the output's own)."""
    kept, skip = [], False
    for arg in argv:
        if skip:
            skip = False
            continue
        if arg in ("--resume", "--overwrite", "--no-overwrite") or arg.startswith(("--resume=", "--overwrite=")):
            skip = arg == "--resume"
            continue
        kept.append(arg)
    command = shlex.join(["dreambooth", *kept, "--resume", "latest"])
    world = os.environ.get("WORLD_SIZE", "1")
    if world not in ("", "1"):       # launched by accelerate: relaunched the same way, on as many processes
        return f"accelerate launch (its options as before: {world} processes) -m {command}"
    return command


if __name__ == "__main__":
    main()
