"""WebUI sampler names and schedule types -> diffusers schedulers."""
import numpy as np
import pytest

from conftest import run_cli
from dreambooth.errors import UserError
from dreambooth.generation.samplers import SAMPLERS, make_scheduler, resolve, sampler_names, sampler_table


@pytest.fixture(autouse=True)
def _hash_cache(tmp_path_factory, monkeypatch):
    """Model/LoRA hashes are cached; keep the tests' cache out of the user's home."""
    monkeypatch.setenv("DREAMBOOTH_CACHE", str(tmp_path_factory.getbasetemp() / "hash-cache"))

REQUIRED = ["Euler", "Euler a", "LMS", "Heun", "DPM2", "DPM2 a", "DPM++ 2M", "DPM++ 2M SDE", "DPM++ SDE",
            "DPM++ 2S a", "DDIM", "PLMS", "UniPC", "LCM"]

SD_CONFIG = dict(_class_name="DDIMScheduler", beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                 clip_sample=False, set_alpha_to_one=False, steps_offset=1, prediction_type="epsilon",
                 num_train_timesteps=1000)


def test_all_webui_names_are_in_the_table():
    assert set(REQUIRED) <= set(sampler_names())


def test_unknown_sampler_lists_the_valid_ones():
    with pytest.raises(UserError) as err:
        resolve("Foo")
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith("--sampler Foo: unknown")
    assert all(name in msg for name in REQUIRED)


def test_unsupported_schedule_lists_the_allowed_ones():
    with pytest.raises(UserError) as err:
        resolve("DDIM", "Karras")
    msg = str(err.value)
    assert "\n" not in msg and "DDIM" in msg and "allowed: Automatic, Uniform, SGM Uniform" in msg
    with pytest.raises(UserError, match="unknown; valid"):
        resolve("Euler", "Wobbly")
    for spacing in ("Uniform", "SGM Uniform"):         # LCM spaces its own steps: these would change nothing
        with pytest.raises(UserError, match="allowed: Automatic$"):
            resolve("LCM", spacing)


def test_names_are_forgiving():
    assert resolve("euler A")[0].name == "Euler a"
    assert resolve("k_dpmpp_2m")[0].name == "DPM++ 2M"
    assert resolve("DPM++ 2M Karras") == (resolve("DPM++ 2M")[0], "Karras")     # WebUI < 1.9 names
    assert resolve("DPM++ 2M SDE Exponential", "Automatic")[1] == "Exponential"
    assert resolve("Euler", "sgm_uniform")[1] == "SGM Uniform"


@pytest.mark.parametrize("sampler", [s.name for s in SAMPLERS])
def test_every_supported_pair_builds_and_sets_timesteps(sampler):
    row, _ = resolve(sampler)
    for schedule in row.schedules:
        sched = make_scheduler(SD_CONFIG, sampler, schedule)
        sched.set_timesteps(6)
        assert len(sched.timesteps) >= 6


def test_schedules_reach_the_scheduler():
    assert make_scheduler(SD_CONFIG, "DPM++ 2M").config.use_karras_sigmas            # WebUI's Automatic
    assert not make_scheduler(SD_CONFIG, "DPM++ 2M", "Uniform").config.use_karras_sigmas
    assert make_scheduler(SD_CONFIG, "DPM++ 2M SDE").config.use_exponential_sigmas
    assert make_scheduler(SD_CONFIG, "DPM++ 2M SDE").config.algorithm_type == "sde-dpmsolver++"
    assert make_scheduler(SD_CONFIG, "Euler").config.timestep_spacing == "linspace"
    assert make_scheduler(SD_CONFIG, "Euler", "SGM Uniform").config.timestep_spacing == "trailing"
    assert make_scheduler(SD_CONFIG, "DDIM").config.timestep_spacing == "leading"    # the model's own
    assert make_scheduler(SD_CONFIG, "PLMS").config.skip_prk_steps
    # a config that asks for Karras does not leak into a sampler run with Uniform
    assert not make_scheduler(dict(SD_CONFIG, use_karras_sigmas=True), "Euler").config.use_karras_sigmas


def test_euler_a_karras_sigmas():
    plain = make_scheduler(SD_CONFIG, "Euler a")
    karras = make_scheduler(SD_CONFIG, "Euler a", "Karras")
    reference = make_scheduler(SD_CONFIG, "Euler", "Karras")
    for s in (plain, karras, reference):
        s.set_timesteps(8)
    np.testing.assert_allclose(karras.sigmas.numpy(), reference.sigmas.numpy(), rtol=1e-4)
    np.testing.assert_allclose(karras.timesteps.numpy(), reference.timesteps.numpy(), rtol=1e-3, atol=1e-2)
    assert karras.sigmas[0] == pytest.approx(float(plain.sigmas[0]), rel=1e-5)
    assert not np.allclose(karras.sigmas.numpy(), plain.sigmas.numpy())


def test_beta_schedule_differs_from_uniform():
    beta = make_scheduler(SD_CONFIG, "Euler", "Beta")
    plain = make_scheduler(SD_CONFIG, "Euler", "Uniform")
    beta.set_timesteps(8)
    plain.set_timesteps(8)
    assert not np.allclose(beta.sigmas.numpy(), plain.sigmas.numpy())


def test_list_samplers_cli():
    code, out, err = run_cli("generate", "--list-samplers")
    assert code == 0, err
    for name in REQUIRED:
        assert name in out
    assert "DPMSolverMultistepScheduler" in out and sampler_table().splitlines()[0] in out


@pytest.fixture(scope="module")
def pipes(tiny_sd1, tiny_sdxl):
    from dreambooth.generation.pipeline import load_generation_pipeline
    return {"sd1": load_generation_pipeline(str(tiny_sd1)), "sdxl": load_generation_pipeline(str(tiny_sdxl))}


@pytest.mark.parametrize("family", ["sd1", "sdxl"])
def test_every_sampler_runs(pipes, family):
    from dreambooth.generation.params import GenerationParams
    from dreambooth.generation.sampling import generate
    pipe = pipes[family]
    for name in sampler_names():
        out = generate(pipe, GenerationParams("a dog", sampler=name, steps=2, seed=3, width=16, height=16))
        pixels = np.asarray(out[0].image)
        # (NaN latents become a black picture: DPM2 a's 0/0 noise at 2 steps did)
        assert pixels.shape == (16, 16, 3) and pixels.any(), name
        assert f"Sampler: {name}," in out[0].infotext


def test_steps_a_scheduler_cannot_take_are_one_line():
    """diffusers' DPM2 a at 2 steps, with Karras sigmas from 157 down (the toy model's linear betas): its
    steps come out NaN, which made a black picture without a word."""
    from dreambooth.generation.samplers import make_scheduler
    config = dict(num_train_timesteps=1000, beta_schedule="linear", beta_start=0.0001, beta_end=0.02,
                  timestep_spacing="trailing", steps_offset=1)
    scheduler = make_scheduler(config, "DPM2 a", "Automatic", [1])
    with pytest.raises(UserError, match="--sampler DPM2 a at 2 steps: diffusers' scheduler has no valid steps"):
        scheduler.set_timesteps(2)
    make_scheduler(config, "DPM2 a", "Automatic", [1]).set_timesteps(3)
