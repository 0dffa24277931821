"""Where a training run's time went (training/phases.py): phases from the progress events, a phase
run inside another counted within it, and the rest; the summary's and the server log's line."""
import time

from dreambooth import progress
from dreambooth.training.phases import REST, PhaseClock, phase_line


def test_phases_nest_and_add_up():
    clock = PhaseClock()
    with progress.subscribed(clock):
        progress.message("not a phase")
        with progress.task("class images", 2):
            time.sleep(0.05)
        with progress.task("training", 4):
            time.sleep(0.02)
            for _ in range(2):
                with progress.task("validation", 1):
                    time.sleep(0.03)
        with progress.task("saving", 1):
            pass
        time.sleep(0.02)
    with progress.task("another job's", 1):          # after the run's scope: not counted
        pass
    seconds = clock.seconds()
    assert list(seconds) == [REST, "class images", "training", "saving", "total"]
    assert seconds["class images"] >= 0.05 and seconds["training"] >= 0.08 and seconds[REST] >= 0.02
    assert abs(sum(v for k, v in seconds.items() if k != "total") - seconds["total"]) < 1e-6
    assert 0.06 <= clock.within["training"]["validation"] < seconds["training"]     # both validations, once
    assert "validation" not in seconds
    line = phase_line(seconds, clock.within)
    assert line.startswith(f"time: {seconds['total']:.1f} s in all: loading and setup ")
    assert "training " in line and "(of which validation " in line and line.endswith(" s")
