"""Pretrain the toy base model on the toy world, on a CPU, resumably.

Three phases, each skipped when its output is already in the state folder:

1. **VAE** (``vae/``): an ``AutoencoderKL`` trained as a generic codec for 32x32 pictures of shapes:
   world scenes plus shapes carrying random two-colour textures (stripes, checker, dots of several
   sizes), so that it can later represent whatever DreamBooth subject it is shown. Loss: MSE + L1 on
   pixels plus a KL term of weight 1e-6 (as Stable Diffusion). The latent scaling factor is
   1/std of the latents of the cached dataset.
2. **Cache** (``cache.pt``): a fixed dataset of world scenes (never patterned), rendered once and
   encoded once by the VAE (posterior mean and std), with each caption's index; captions are
   tokenized once (224 captions + the empty one).
3. **Text encoder + UNet** (``state.pt``): trained together from the cache with AdamW, linear
   warm-up then a constant learning rate (``decay_from``: from that step a cosine down to 5% at
   ``steps``; not used for the shipped UNet's teacher, see the README), min-SNR loss weighting (gamma 5),
   caption dropout 10%, and an EMA of both. From step ``partial_from`` on, a share
   ``partial_captions`` of the captions is replaced by a partial one (``world.PARTIAL_FORMS``: no
   colour, no background, or neither), so that ``a square`` (a DreamBooth class prompt) and ``a sks
   square on a red background`` are in distribution. The shipped UNet's teacher was trained 3,200 steps
   without, then with them; the best snapshot is chosen among those after ``partial_from``. Every
   ``eval_every`` steps the EMA weights are written as a pipeline (``latest/``) and measured with the
   oracle (``evals.jsonl``); the best so far is kept in ``best/``. The whole state (weights, EMA,
   optimizer, step) is saved atomically every few minutes and on SIGTERM/SIGINT; the random numbers
   of step ``k`` are drawn from a generator seeded with ``(seed, k)``, so a resumed run continues
   exactly as an uninterrupted one would.

**Distillation** (``teacher``): phase 3 trains a smaller UNet (``unet_channels``) to match a teacher
pipeline's UNet as well as the data: the loss adds ``distil_weight`` times the squared distance to the
teacher's prediction on the same noisy latents and caption. The teacher's VAE becomes the run's
(phase 1 is skipped; the cache holds the teacher's latents at its scaling factor) and its text encoder
is kept frozen, its outputs computed once for every caption. A 32/64/64 student (1.7M parameters, 3.3 MB
in fp16), distilled from the 6.6M-parameter step-4400 model with the tuned decoder for 6,000 steps at
batch 32 with partial captions throughout and the learning rate on a cosine to 5% from step 3,000,
took about 80 minutes on one core (55 on two) and drew the toy world better than its teacher: it is the
shipped UNet (README). ``--teacher toy`` now means that student: to repeat the recipe, take the teacher
from the package as it was at commit bf5cdda.

**Continuing** (``init_from``): phase 3 starts from a pipeline's text encoder and UNet (its channels),
with its VAE and latent scale as in distillation, and a fresh optimizer and step count: e.g. to anneal
the teacher (``--init-from toy --partial-from 0 --decay-from 1 --steps 1400`` at bf5cdda) when the state
folder that trained it is gone.

``export(state_dir)`` copies ``best/`` (UNet and VAE in fp16, text encoder fp32; safetensors) to ``dreambooth/toy/model``, where
``--model toy`` finds it. ``tune_packaged_decoder`` (``--tune-decoder``) then trains that VAE's decoder
alone (see ``tune_decoder``); the shipped VAE had 1,500 such steps.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import signal
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import UserError
from ..outputs import as_user_file
from . import architecture as arch
from .world import (COLOURS, IMAGE_SIZE, PARTIAL_FORMS, PATTERNS, SHAPES, Scene, all_prompts, caption,
                    partial_caption, render, sample_scene)


@dataclass
class PretrainConfig:
    out: str = ".toy-pretrain"
    seed: int = 0
    threads: int = 1
    # phase 1
    vae_steps: int = 500
    vae_batch: int = 32
    vae_lr: float = 2e-3
    vae_textured: float = 0.3          # share of VAE training pictures with a texture
    decoder_steps: int = 1500          # --tune-decoder: decoder-only steps (encoder frozen) ...
    decoder_lr: float = 1e-3
    decoder_textured: float = 0.5      # ... on this share of textured pictures
    # phase 2
    dataset: int = 30_000
    # phase 3
    steps: int = 20_000                # stop after this many steps (resume to go on)
    batch: int = 32
    lr: float = 6e-4
    warmup: int = 300
    weight_decay: float = 1e-2
    ema: float = 0.995
    min_snr: float = 5.0
    caption_dropout: float = 0.1
    partial_captions: float = 0.3      # share of (not dropped) captions given a partial form ...
    partial_from: int = 3200           # ... from this step on
    decay_from: int = 0                # 0: constant lr after warm-up; else a cosine from here to 5% at `steps`
    unet_channels: str = "64,128,128"  # the UNet's block_out_channels
    teacher: str = ""                  # distil: a toy pipeline folder ("toy": the packaged one) whose UNet
    distil_weight: float = 1.0         # teaches this one; its VAE and (frozen) text encoder are kept
    init_from: str = ""                # continue: a toy pipeline folder ("toy": the packaged one) whose VAE,
                                       # text encoder and UNet (and its channels) are the starting weights
    eval_every: int = 400
    eval_n: int = 64
    save_every_s: float = 240.0
    max_minutes: float | None = None   # stop (after saving) when this much wall time has passed


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def _atomic_save(obj, path: Path) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


# ----- phase 1: VAE ----------------------------------------------------------------------------

def textured_scene(rng: np.random.Generator) -> Scene:
    """A shape with a random two-colour texture on a third colour (VAE training only)."""
    base = sample_scene(rng)
    second = [c for c in COLOURS if c not in (base.colour, base.background)]
    return Scene(base.shape, base.colour, base.background, base.cx, base.cy, base.half,
                 pattern=PATTERNS[int(rng.integers(len(PATTERNS)))],
                 pattern_colour=second[int(rng.integers(len(second)))],
                 pattern_period=int(rng.choice([4, 6, 8, 10])), pattern_phase=int(rng.integers(10)))


def vae_batch(seed: int, step: int, n: int, textured: float) -> torch.Tensor:
    rng = np.random.default_rng([seed, 1, step])
    imgs = [render(textured_scene(rng) if rng.random() < textured else sample_scene(rng)) for _ in range(n)]
    return to_tensor(np.stack(imgs))


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 (N, H, W, 3) to float (N, 3, H, W) in [-1, 1]."""
    return torch.from_numpy(images).permute(0, 3, 1, 2).float().div(127.5).sub(1)


def _lr_factor(step: int, warmup: int, decay_from: int, steps: int, floor: float) -> float:
    """Learning-rate factor of every phase: linear warm-up over ``warmup`` steps, constant until
    ``decay_from``, then a cosine down to ``floor`` at ``steps``."""
    factor = min(1.0, (step + 1) / warmup)
    if step < decay_from:
        return factor
    span = max(1, steps - decay_from)
    cosine = 0.5 * (1 + math.cos(math.pi * min(step - decay_from, span) / span))
    return factor * (floor + (1 - floor) * cosine)


def train_vae(cfg: PretrainConfig, out: Path):
    from diffusers import AutoencoderKL
    if (out / "vae" / "config.json").exists():
        return AutoencoderKL.from_pretrained(out / "vae")
    vae = arch.build_vae(cfg.seed)
    opt = torch.optim.AdamW(vae.parameters(), lr=cfg.vae_lr, weight_decay=0.0)
    step = 0
    ckpt = out / "vae_state.pt"
    if ckpt.exists():
        st = torch.load(ckpt, weights_only=False)
        vae.load_state_dict(st["vae"])
        opt.load_state_dict(st["opt"])
        step = st["step"]
        log(f"vae: resumed at step {step}")
    last_save, t0 = time.time(), time.time()
    vae.train()
    while step < cfg.vae_steps:
        for g in opt.param_groups:
            g["lr"] = cfg.vae_lr * _lr_factor(step, 50, 0, cfg.vae_steps, 0.1)
        x = vae_batch(cfg.seed, step, cfg.vae_batch, cfg.vae_textured)
        post = vae.encode(x).latent_dist
        rec = vae.decode(post.sample(generator=torch.Generator().manual_seed(cfg.seed * 7919 + step))).sample
        mse = F.mse_loss(rec, x)
        loss = mse + F.l1_loss(rec, x) + 1e-6 * post.kl().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        step += 1
        if step % 50 == 0:
            log(f"vae step {step}/{cfg.vae_steps} mse {mse.item():.4f} ({(time.time() - t0) / step:.2f} s/step)")
        if time.time() - last_save > cfg.save_every_s:
            _atomic_save({"vae": vae.state_dict(), "opt": opt.state_dict(), "step": step}, ckpt)
            last_save = time.time()
    log(f"vae done: held-out mse {held_out_mse(vae, cfg.seed):.4f}")
    vae.save_pretrained(out / "vae.tmp")
    if (out / "vae").exists():
        shutil.rmtree(out / "vae")
    os.replace(out / "vae.tmp", out / "vae")
    return vae


def tune_decoder(vae, cfg: PretrainConfig) -> float:
    """Train the VAE's decoder only, the encoder frozen, and return the held-out MSE after.

    500 VAE steps leave a decoder that blurs a two-colour pattern into its surroundings (an orange
    body with blue dots on yellow comes back yellow), and DreamBooth can only ever draw what the
    decoder draws. With the encoder frozen the latents stay the same, so the UNet trained on them
    (and every cached latent) stays valid: like the fine-tuned decoders released for Stable Diffusion.
    """
    vae.requires_grad_(False)
    params = [p for m in (vae.decoder, vae.post_quant_conv) for p in m.parameters()]
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.AdamW(params, lr=cfg.decoder_lr, weight_decay=0.0)
    t0 = time.time()
    for step in range(cfg.decoder_steps):
        for g in opt.param_groups:
            g["lr"] = cfg.decoder_lr * _lr_factor(step, 50, 0, cfg.decoder_steps, 0.1)
        x = vae_batch(cfg.seed + 2, step, cfg.vae_batch, cfg.decoder_textured)
        with torch.no_grad():
            z = vae.encode(x).latent_dist.sample(generator=torch.Generator().manual_seed(cfg.seed * 7919 + step))
        rec = vae.decode(z).sample
        loss = F.mse_loss(rec, x) + F.l1_loss(rec, x)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        if (step + 1) % 100 == 0:
            log(f"decoder step {step + 1}/{cfg.decoder_steps} loss {loss.item():.4f} "
                f"({(time.time() - t0) / (step + 1):.2f} s/step)")
    vae.requires_grad_(False)
    return held_out_mse(vae, cfg.seed)


def held_out_mse(vae, seed: int) -> float:
    vae.eval()
    with torch.no_grad():
        x = vae_batch(seed + 999, 0, 256, 0.5)
        return F.mse_loss(vae.decode(vae.encode(x).latent_dist.mean).sample, x).item()


def tune_packaged_decoder(cfg: PretrainConfig, dest: str | Path | None = None) -> Path:
    """``--tune-decoder``: tune the decoder of the packaged toy model's VAE in place (fp16, as shipped)."""
    from diffusers import AutoencoderKL
    from ..models.specs import TOY_MODEL_DIR
    torch.set_num_threads(cfg.threads)
    folder = Path(dest or TOY_MODEL_DIR) / "vae"
    vae = AutoencoderKL.from_pretrained(folder, torch_dtype=torch.float32)
    log(f"decoder: held-out mse before {held_out_mse(vae, cfg.seed):.4f}")
    log(f"decoder: held-out mse after {tune_decoder(vae, cfg):.4f}")
    tmp = folder.with_name("vae.tmp")
    vae.to(torch.float16).save_pretrained(tmp, safe_serialization=True)
    as_user_file(tmp)
    shutil.rmtree(folder)
    os.replace(tmp, folder)
    return folder


# ----- phase 2: cache --------------------------------------------------------------------------

CAPTIONS = [caption(c, s, b) for c, s, b in all_prompts()]
EMPTY = len(CAPTIONS)     # index of "" in the token table


def partial_table() -> tuple[list[str], torch.Tensor]:
    """The partial captions (token-table rows after ``EMPTY``) and, for each full caption and partial
    form, the row of its partial caption: a (224, len(PARTIAL_FORMS)) index tensor."""
    texts: list[str] = []
    rows = []
    for combo in all_prompts():
        row = []
        for form in range(len(PARTIAL_FORMS)):
            text = partial_caption(*combo, form)
            if text not in texts:
                texts.append(text)
            row.append(EMPTY + 1 + texts.index(text))
        rows.append(row)
    return texts, torch.tensor(rows)


def swap_partial(cap: torch.Tensor, share: float, index: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Caption rows with a ``share`` of the full ones (not ``EMPTY``) replaced by a partial form drawn
    with equal chances; ``index`` is ``partial_table()``'s."""
    swap = (cap != EMPTY) & (torch.rand(len(cap), generator=generator) < share)
    form = torch.randint(len(PARTIAL_FORMS), (len(cap),), generator=generator)
    out = cap.clone()
    out[swap] = index[cap[swap], form[swap]]
    return out


def build_cache(cfg: PretrainConfig, out: Path, vae, tokenizer) -> dict:
    path = out / "cache.pt"
    if path.exists():
        return torch.load(path, weights_only=False)
    log(f"cache: rendering and encoding {cfg.dataset} pictures")
    rng = np.random.default_rng([cfg.seed, 2])
    index = {c: i for i, c in enumerate(CAPTIONS)}
    means, stds, caps = [], [], []
    vae.eval()
    with torch.no_grad():
        for start in range(0, cfg.dataset, 500):
            scenes = [sample_scene(rng) for _ in range(min(500, cfg.dataset - start))]
            post = vae.encode(to_tensor(np.stack([render(s) for s in scenes]))).latent_dist
            means.append(post.mean.half())
            stds.append(post.std.half())
            caps += [index[s.caption()] for s in scenes]
    mean, std = torch.cat(means), torch.cat(stds)
    g = torch.Generator().manual_seed(cfg.seed)
    sample = mean[:5000].float() + std[:5000].float() * torch.randn(mean[:5000].shape, generator=g)
    scaling = float(1.0 / sample.std())
    ids = tokenizer(CAPTIONS + [""], padding="max_length", max_length=tokenizer.model_max_length,
                    truncation=True, return_tensors="pt").input_ids
    cache = {"mean": mean, "std": std, "caption": torch.tensor(caps), "ids": ids, "scaling_factor": scaling,
             "latent_mean": float(sample.mean())}
    _atomic_save(cache, path)
    log(f"cache done: scaling factor {scaling:.4f} (latent mean {float(sample.mean()):.3f})")
    return cache


# ----- phase 3: text encoder + UNet ------------------------------------------------------------

class Trainer:
    """Trains a UNet (and the text encoder) from scratch, or, given a ``teacher`` pipeline, distils the
    teacher's UNet into this one: the loss adds ``distil_weight`` times the distance to the teacher's
    prediction, and the teacher's text encoder is kept, frozen (its outputs computed once)."""

    def __init__(self, cfg: PretrainConfig, out: Path, vae, tokenizer, cache: dict, teacher=None, init=None):
        self.cfg, self.out, self.vae, self.tokenizer, self.cache = cfg, out, vae, tokenizer, cache
        vae.register_to_config(scaling_factor=cache["scaling_factor"])
        self.channels = tuple(init.unet.config.block_out_channels) if init else \
            tuple(int(c) for c in cfg.unet_channels.split(","))
        self.unet = arch.build_unet(cfg.seed + 1, self.channels)
        self.teacher = teacher.unet.requires_grad_(False).eval() if teacher else None
        self.te = teacher.text_encoder.requires_grad_(False).eval() if teacher else \
            arch.build_text_encoder(tokenizer, cfg.seed + 2)
        if init is not None:     # overwritten again below if there is a saved state to resume
            self.unet.load_state_dict(init.unet.state_dict())
            self.te.load_state_dict(init.text_encoder.state_dict())
        self.sched = arch.build_train_scheduler()
        self.params = self._trained(self.unet, self.te)
        decay = [p for p in self.unet.parameters() if p.ndim > 1]
        no_decay = [p for p in self.params if all(p is not q for q in decay)]
        self.opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                                      {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr, betas=(0.9, 0.99))
        self.ema = [p.detach().clone() for p in self.params]
        self.step = 0
        self.best, self.best_step = -1.0, 0
        partial, self.partial_index = partial_table()
        self.ids = torch.cat([cache["ids"], tokenizer(partial, padding="max_length", truncation=True,
                                                      max_length=tokenizer.model_max_length,
                                                      return_tensors="pt").input_ids])
        if self.teacher is not None:
            with torch.no_grad():
                self.contexts = self.te(self.ids)[0]
        self.path = out / "state.pt"
        if self.path.exists():
            st = torch.load(self.path, weights_only=False)
            self.unet.load_state_dict(st["unet"])
            self.te.load_state_dict(st["text_encoder"])
            self.opt.load_state_dict(st["opt"])
            for e, v in zip(self.ema, st["ema"]):
                e.copy_(v)
            self.step, self.best, self.best_step = st["step"], st.get("best", -1.0), st.get("best_step", 0)
            log(f"resumed at step {self.step} (best eval score {self.best:.3f})")
        ac = self.sched.alphas_cumprod
        self.snr = ac / (1 - ac)

    def save(self) -> None:
        _atomic_save({"unet": self.unet.state_dict(), "text_encoder": self.te.state_dict(),
                      "opt": self.opt.state_dict(), "ema": self.ema, "step": self.step, "best": self.best,
                      "best_step": self.best_step,
                      "config": asdict(self.cfg)}, self.path)
        log(f"saved state at step {self.step}")

    def train_step(self) -> float:
        cfg, c = self.cfg, self.cache
        g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + self.step)
        idx = torch.randint(len(c["caption"]), (cfg.batch,), generator=g)
        mean, std = c["mean"][idx].float(), c["std"][idx].float()
        latents = (mean + std * torch.randn(mean.shape, generator=g)) * c["scaling_factor"]
        cap = c["caption"][idx].clone()
        cap[torch.rand(cfg.batch, generator=g) < cfg.caption_dropout] = EMPTY
        noise = torch.randn(latents.shape, generator=g)
        t = torch.randint(0, self.sched.config.num_train_timesteps, (cfg.batch,), generator=g)
        if cfg.partial_captions and self.step >= cfg.partial_from:
            cap = swap_partial(cap, cfg.partial_captions, self.partial_index, g)
        noisy = self.sched.add_noise(latents, noise, t)
        context = self.te(self.ids[cap])[0] if self.teacher is None else self.contexts[cap]
        pred = self.unet(noisy, t, context).sample
        snr = self.snr[t]
        weight = torch.clamp(snr, max=cfg.min_snr) / snr
        per_sample = F.mse_loss(pred, noise, reduction="none").mean(dim=(1, 2, 3))
        if self.teacher is not None:
            with torch.no_grad():
                taught = self.teacher(noisy, t, context).sample
            taught_error = F.mse_loss(pred, taught, reduction="none").mean(dim=(1, 2, 3))
            per_sample = per_sample + cfg.distil_weight * taught_error
        loss = (per_sample * weight).mean()
        lr = cfg.lr * _lr_factor(self.step, cfg.warmup, cfg.decay_from or cfg.steps, cfg.steps, 0.05)
        for group in self.opt.param_groups:
            group["lr"] = lr
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.params, 1.0)
        self.opt.step()
        decay = min(cfg.ema, (1 + self.step) / (10 + self.step))
        with torch.no_grad():
            torch._foreach_lerp_(self.ema, [p.detach() for p in self.params], 1 - decay)
        self.step += 1
        return loss.item()

    def _trained(self, unet, te) -> list:
        """The parameters the optimiser and the EMA hold, in this order: the UNet's, then the text
        encoder's unless it is the teacher's (frozen)."""
        return list(unet.parameters()) + (list(te.parameters()) if self.teacher is None else [])

    def _train_mode(self) -> None:
        self.unet.train()
        self.te.train(self.teacher is None)

    def ema_pipeline(self):
        unet = arch.build_unet(0, self.channels)
        te = arch.build_text_encoder(self.tokenizer, 0) if self.teacher is None else self.te
        with torch.no_grad():
            for dst, src in zip(self._trained(unet, te), self.ema, strict=True):
                dst.copy_(src)
        pipe = arch.build_pipeline(self.vae, te.eval(), self.tokenizer, unet.eval())
        pipe.set_progress_bar_config(disable=True)
        return pipe

    def evaluate(self) -> dict:
        from .measure import grid, measure, measure_partial
        pipe = self.ema_pipeline()
        t0 = time.time()
        res = measure(pipe, n=self.cfg.eval_n, seed=1, return_images=True)
        images = res.pop("images")
        res.pop("prompts")
        score = res["background"] + res["object_colour"]
        partial = self.cfg.partial_captions and self.step > self.cfg.partial_from
        if partial:
            res["partial"] = measure_partial(pipe, n=self.cfg.eval_n // 2, seed=1)
            score += sum(res["partial"].values()) / len(res["partial"])
        # the first snapshot trained with partial captions replaces any best from before them
        new_phase = partial and self.best_step <= self.cfg.partial_from
        res.update(step=self.step, seconds=round(time.time() - t0, 1), time=time.strftime("%H:%M:%S"))
        with open(self.out / "evals.jsonl", "a") as f:
            f.write(json.dumps(res) + "\n")
        log(f"eval step {self.step}: background {res['background']:.3f} object {res['object_colour']:.3f} "
            f"shape {res['shape']:.3f} partial {res.get('partial')} ({res['seconds']} s)")
        save_pipeline(pipe, self.out / "latest", meta=res)
        grid(images).save(self.out / "latest" / "samples.png")
        if score > self.best or new_phase:
            self.best, self.best_step = score, self.step
            save_pipeline(pipe, self.out / "best", meta=res)
            grid(images).save(self.out / "best" / "samples.png")
        return res

    def run(self) -> None:
        cfg = self.cfg
        stop = {"flag": False}

        def on_signal(signum, frame):
            stop["flag"] = True
        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
        start = last_save = time.time()
        t_steps, losses = time.time(), []
        self._train_mode()
        while self.step < cfg.steps and not stop["flag"]:
            losses.append(self.train_step())
            if self.step % 50 == 0:
                log(f"step {self.step} loss {np.mean(losses):.4f} "
                    f"({(time.time() - t_steps) / len(losses):.2f} s/step)")
                t_steps, losses = time.time(), []
            if self.step % cfg.eval_every == 0:
                self.save()
                last_save = time.time()
                try:
                    self.evaluate()
                except Exception as exc:   # a broken measurement must not lose the run
                    log(f"eval failed: {type(exc).__name__}: {exc}")
                self._train_mode()
            elif time.time() - last_save > cfg.save_every_s:
                self.save()
                last_save = time.time()
            if cfg.max_minutes and time.time() - start > cfg.max_minutes * 60:
                break
        self.save()


def save_pipeline(pipe, directory: Path, meta: dict | None = None, fp16: bool = False) -> None:
    """Write ``pipe`` with ``save_pretrained`` (safetensors) to ``directory``, replacing it atomically."""
    directory = Path(directory)
    tmp = directory.with_name(directory.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    # fp16 for the UNet and VAE only: diffusers loads them back as fp32, but transformers would keep
    # an fp16 text encoder in fp16 (slow on CPUs, and a dtype mismatch with an fp32 UNet).
    half = [pipe.unet, pipe.vae] if fp16 else []
    for module in half:
        module.to(torch.float16)
    pipe.save_pretrained(tmp, safe_serialization=True)
    as_user_file(tmp)
    for module in half:
        module.to(torch.float32)
    if meta is not None:
        (tmp / "toy_figures.json").write_text(json.dumps(meta, indent=2) + "\n")
    old = directory.with_name(directory.name + ".old")
    if directory.exists():
        os.replace(directory, old)
    os.replace(tmp, directory)
    if old.exists():
        shutil.rmtree(old)


def pretrain(cfg: PretrainConfig) -> Path:
    if cfg.teacher and cfg.init_from:  # before anything is written
        raise UserError("--teacher and --init-from: give one (distil into a new UNet, or continue a pipeline)")
    torch.set_num_threads(cfg.threads)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(asdict(cfg), indent=2))
    tokenizer = arch.build_tokenizer(out / "tokenizer")
    teacher = load_teacher(cfg.teacher, out) if cfg.teacher else None
    init = load_teacher(cfg.init_from, out, flag="--init-from") if cfg.init_from else None
    vae = train_vae(cfg, out)
    vae.requires_grad_(False)
    cache = build_cache(cfg, out, vae, tokenizer)
    if teacher or init:      # the latents the pipeline learned, not a re-estimate of their scale
        cache["scaling_factor"] = (teacher or init).vae.config.scaling_factor
    trainer = Trainer(cfg, out, vae, tokenizer, cache, teacher, init)
    trainer.run()
    return out


def load_teacher(folder: str, out: Path, flag: str = "--teacher"):
    """The pipeline at ``folder`` ("toy": the packaged one) in fp32; its VAE becomes this run's (``out/vae``),
    so that the cached latents are the ones its UNet learned."""
    from ..models.loading import load_pipeline
    pipe = load_pipeline(folder, dtype=torch.float32, flag=flag)
    if not (out / "vae" / "config.json").exists():
        pipe.vae.save_pretrained(out / "vae")
    return pipe


def export(state_dir: str | Path, dest: str | Path | None = None, which: str = "best", fp16: bool = True) -> Path:
    """Copy the ``which`` pipeline (``best`` or ``latest``) of a pretraining run to the package's
    ``toy/model`` folder (or ``dest``), as fp16 safetensors."""
    from diffusers import StableDiffusionPipeline
    from ..models.specs import TOY_MODEL_DIR
    src = Path(state_dir) / which
    dest = Path(dest) if dest else TOY_MODEL_DIR
    pipe = StableDiffusionPipeline.from_pretrained(src, safety_checker=None, requires_safety_checker=False)
    meta_path = src / "toy_figures.json"
    meta = json.loads(meta_path.read_text()) if meta_path.exists() else None
    save_pipeline(pipe, dest, meta=meta, fp16=fp16)
    return dest


__all__ = ["PretrainConfig", "pretrain", "export", "tune_packaged_decoder", "SHAPES", "IMAGE_SIZE"]
