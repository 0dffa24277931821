"""Exact resume on this machine's device: with the default kernels and with --deterministic, do two
runs with the same settings end with the same weights, and does a killed-and-resumed run end with them?

    python benchmarks/resume_check.py              # a GPU if there is one, else the CPU

A tiny SD1 (``dreambooth.testing.tiny``, the real architecture) trains 6 steps with a checkpoint at
step 3, as LoRA and as full + text encoder, bf16 on a GPU: twice straight, and once killed after step
4 and resumed from the step-3 checkpoint. Prints one line per method and kernel mode: the largest
weight difference between the two straight runs and between the resumed and the straight run (0 is
bit for bit), whether the losses matched, and the seconds per run. On the CPU every figure is 0 in
both modes (tests/test_train.py checks the same); on a GPU the default kernels may differ, which is
what --deterministic is for.
"""
from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path


def main() -> None:
    import torch
    from safetensors.torch import load_file

    from dreambooth.testing.tiny import save_tiny
    from dreambooth.toy.demo import write_instance_images
    from dreambooth.toy.world import DEMO_SUBJECT
    from dreambooth.training.callbacks import TrainingCallback
    from dreambooth.training.config import build_config
    from dreambooth.training.trainer import train

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", default=None, help="a folder to work in (default: a temporary one)")
    args = ap.parse_args()
    os.environ.setdefault("DREAMBOOTH_NO_PROGRESS", "1")
    work = Path(args.work or tempfile.mkdtemp(prefix="resume-check-"))
    model, photos = work / "model", work / "photos"
    if not (model / "model_index.json").exists():
        save_tiny("sd1", model)
    write_instance_images(DEMO_SUBJECT, photos)
    gpu = torch.cuda.is_available()

    class Kill(TrainingCallback):
        def on_step_end(self, run, step):
            if step.step == 4:
                raise KeyboardInterrupt

    def weights(out: Path) -> dict:
        return {f"{f.relative_to(out)}/{k}": v.float() for f in out.rglob("*.safetensors")
                if "checkpoints" not in f.relative_to(out).parts for k, v in load_file(str(f)).items()}

    def farthest(a: dict, b: dict) -> float:
        if a.keys() != b.keys():
            return float("inf")
        return max((a[k] - b[k]).abs().max().item() for k in a)

    for method, extra in (("lora", dict(rank=4)), ("full", dict(train_text_encoder=True))):
        for deterministic in (False, True):
            tag = f"{method}-{'det' if deterministic else 'default'}"
            common = dict(model=str(model), instance_dir=str(photos), instance_prompt="a sks square", class_prompt="a square",
                          num_class_images=2, class_steps=2, class_dir=str(work / "class_images"), method=method,
                          resolution=64, max_steps=6, checkpoint_every=3, keep_checkpoints=0, random_flip=True,
                          mixed_precision="bf16" if gpu else "no", deterministic=deterministic, overwrite=True,
                          export_kohya=False, **extra)
            started = time.perf_counter()
            runs = [train(build_config(None, dict(common, output=str(work / f"{tag}-{i}"))), callbacks=[]) for i in (1, 2)]
            seconds = (time.perf_counter() - started) / 2
            partial = work / f"{tag}-resumed"
            shutil.rmtree(partial, ignore_errors=True)
            try:
                train(build_config(None, dict(common, output=str(partial))), callbacks=[Kill()])
            except KeyboardInterrupt:
                pass
            resumed = train(build_config(None, dict(common, output=str(partial), resume="latest")), callbacks=[])
            first = weights(work / f"{tag}-1")
            print(f"resume_check {'cuda ' + torch.cuda.get_device_name() if gpu else 'cpu'} | {method}"
                  f"{' + text encoder' if method == 'full' else ''}, {'--deterministic' if deterministic else 'default kernels'}: "
                  f"two straight runs differ by {farthest(first, weights(work / f'{tag}-2')):.3g} "
                  f"(losses {'equal' if runs[0].losses == runs[1].losses else 'differ'}); resumed against straight "
                  f"{farthest(first, weights(partial)):.3g} (losses {'equal' if resumed.losses == runs[0].losses else 'differ'}); "
                  f"{seconds:.1f} s per run", flush=True)


if __name__ == "__main__":
    main()
