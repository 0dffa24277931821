"""What ``dreambooth serve`` lists and loads: SD 2.x and SDXL single files (with ``--model-config``, or
a listed folder of their family), each model once, LoRAs with their files' metadata, a model deleted
since it was listed, and a job preset's VAE that this server does not have."""
from __future__ import annotations

import json
import shutil

import httpx
import pytest
import torch

from test_server import http, served
from test_server_jobs import photos
from test_single_file import wide_sd2, wide_sdxl  # noqa: F401 (fixtures: tiny models diffusers reads from a single file)

XL_JOB = {"instance_prompt": "a sks square", "preset": "sdxl-lora", "model": "xl"}


@pytest.fixture(autouse=True)
def own_registry(tmp_path, monkeypatch):
    """The lists hold every model trained on this machine (the cache's registry): other tests' outputs,
    in this worker's shared cache, are not these tests' models."""
    monkeypatch.setenv("DREAMBOOTH_CACHE", str(tmp_path / "cache"))


def single_file(folder, family, path):
    from dreambooth.models.single_file import export_single_file
    path.parent.mkdir(parents=True, exist_ok=True)
    return export_single_file(folder, path, family, dtype=torch.float32)


@pytest.fixture(scope="module")
def files(wide_sd2, wide_sdxl, tmp_path_factory):
    """A --models-dir of an SD 2.x and an SDXL single file, and nothing to take their configs from."""
    models = tmp_path_factory.mktemp("files") / "models"
    single_file(wide_sd2, "sd2", models / "sd2.safetensors")
    single_file(wide_sdxl, "sdxl", models / "xl.safetensors")
    return models


def switch(port, title):
    return http(port, "POST", "/sdapi/v1/options", json={"sd_model_checkpoint": title})


def test_single_files_load_with_serve_model_config(files, wide_sd2, wide_sdxl, tmp_path):
    from dreambooth.server.app import ServerSettings
    settings = ServerSettings(model="toy", data_dir=tmp_path / "data", models_dir=str(files),
                              model_configs=[str(wide_sd2), str(wide_sdxl)])
    with served(settings) as (app, port):
        for title in ("sd2.safetensors", "xl.safetensors"):
            assert switch(port, title).status_code == 200, switch(port, title).text
            assert http(port, "GET", "/sdapi/v1/options").json()["sd_model_checkpoint"] == title
        made = http(port, "POST", "/sdapi/v1/txt2img", json={"prompt": "a dog", "steps": 2, "width": 64, "height": 64})
        assert made.status_code == 200 and len(made.json()["images"]) == 1, made.text


def test_a_listed_folder_of_the_family_serves_as_the_config(files, wide_sd2, tmp_path):
    from dreambooth.server.app import ServerSettings
    models = tmp_path / "models"
    shutil.copytree(files, models)
    shutil.copytree(wide_sd2, models / "sd2-folder")
    with served(ServerSettings(model="toy", data_dir=tmp_path / "data", models_dir=str(models))) as (app, port):
        reply = switch(port, "sd2.safetensors")
        assert reply.status_code == 200, reply.text
    # a folder of the family at another size (a toy-derived fine-tune) is passed over, not tried and failed
    from dreambooth.server.model_configs import config_for_file
    other = tmp_path / "a-other-size"
    shutil.copytree(wide_sd2, other)
    unet = json.loads((other / "unet" / "config.json").read_text())
    unet["block_out_channels"] = [2 * c for c in unet["block_out_channels"]]
    (other / "unet" / "config.json").write_text(json.dumps(unet))
    assert config_for_file(models / "sd2.safetensors", {}, [str(other), str(models / "sd2-folder")]) == \
        str(models / "sd2-folder")


def test_a_single_file_without_configs_says_what_the_operator_can_do(files, tmp_path):
    from dreambooth.errors import UserError
    from dreambooth.server.app import ServerSettings, create_app
    with served(ServerSettings(model="toy", data_dir=tmp_path / "data", models_dir=str(files))) as (app, port):
        reply = switch(port, "xl.safetensors")
        detail = reply.json()["detail"]
        assert reply.status_code == 400 and detail.startswith("sd_model_checkpoint xl.safetensors: "), reply.text
        assert "SDXL" in detail and "dreambooth serve` with --model-config" in detail, detail
        assert str(files) not in detail and "\n" not in detail
    with pytest.raises(UserError, match=r"^--model .*sd2.safetensors: .*SD 2.x.*dreambooth serve` with --model-config"):
        create_app(ServerSettings(model=str(files / "sd2.safetensors"), data_dir=tmp_path / "data2"))


def test_model_configs_are_one_per_family(files, tiny_sd2, tmp_path):
    from dreambooth.errors import UserError
    from dreambooth.server.catalog import Catalog
    shutil.copytree(tiny_sd2, tmp_path / "other-sd2")
    with pytest.raises(UserError, match=r"--model-config .*other-sd2: a second SD 2.x config"):
        Catalog("toy", model_configs=[str(tiny_sd2), str(tmp_path / "other-sd2")])
    with pytest.raises(UserError, match=r"--model-config .*sd2.safetensors: not a diffusers SD 1.x, SD 2.x or SDXL"):
        Catalog("toy", model_configs=[str(files / "sd2.safetensors")])


def test_a_model_inside_models_dir_is_listed_once(tiny_sd1, tmp_path):
    from dreambooth.server.catalog import Catalog
    models = tmp_path / "models"
    shutil.copytree(tiny_sd1, models / "sd1")
    listed = Catalog(str(models / "sd1"), models).models()
    assert [m.title for m in listed] == ["sd1"], [(m.title, m.filename) for m in listed]


def test_loras_list_their_files_metadata(tmp_path):
    from safetensors.torch import save_file

    from dreambooth.server.app import ServerSettings
    loras = tmp_path / "loras"
    loras.mkdir()
    weights = {"lora_unet_mid_block_attentions_0_proj_in.lora_down.weight": torch.zeros(1, 4),
               "lora_unet_mid_block_attentions_0_proj_in.lora_up.weight": torch.zeros(4, 1)}
    tags = {"img": {"sks dog": 3}}
    save_file(weights, str(loras / "xl_style.safetensors"),
              metadata={"ss_base_model_version": "sdxl_base_v1-0", "ss_network_dim": "4",
                        "ss_tag_frequency": json.dumps(tags)})
    save_file(weights, str(loras / "plain.safetensors"))
    with served(ServerSettings(model="toy", data_dir=tmp_path / "data", loras_dir=str(loras))) as (app, port):
        listed = {item["name"]: item["metadata"] for item in http(port, "GET", "/sdapi/v1/loras").json()}
    assert listed["xl_style"] == {"ss_base_model_version": "sdxl_base_v1-0", "ss_network_dim": "4",
                                  "ss_tag_frequency": tags}
    assert listed["plain"] == {}


def test_a_model_deleted_since_it_was_listed_is_one_line_in_the_apis_terms(tiny_sd1, tmp_path):
    from dreambooth.server.app import ServerSettings
    models = tmp_path / "models"
    shutil.copytree(tiny_sd1, models / "sq1")
    with served(ServerSettings(model="toy", data_dir=tmp_path / "data", models_dir=str(models))) as (app, port):
        shutil.rmtree(models / "sq1")         # as a job's model is deleted while a request waits for it
        reply = switch(port, "sq1")
        assert reply.status_code == 400, reply.text
        assert reply.json()["detail"] == "sd_model_checkpoint sq1: no longer on this server (deleted); see GET /sdapi/v1/sd-models"
        made = http(port, "POST", "/sdapi/v1/txt2img", json={"prompt": "a", "steps": 1, "width": 32, "height": 32,
                                                             "override_settings": {"sd_model_checkpoint": "sq1"}})
        assert made.status_code == 400 and made.json()["detail"].startswith(
            "override_settings: sd_model_checkpoint sq1: no longer on this server"), made.text


def test_a_presets_vae_not_here_is_refused_at_submission(tiny_sdxl, tmp_path, monkeypatch):
    import huggingface_hub.constants

    from dreambooth.server.app import ServerSettings
    from dreambooth.server.jobs import job_config
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "empty-hub-cache"))
    models = tmp_path / "models"
    shutil.copytree(tiny_sdxl, models / "xl")
    shutil.copytree(tiny_sdxl / "vae", models / "VAE" / "xl-vae")
    upload = [("photos", (p.name, p.read_bytes(), "image/png")) for p in photos(tmp_path / "photos")]
    with served(ServerSettings(model="toy", data_dir=tmp_path / "data", models_dir=str(models))) as (app, port):
        base = f"http://127.0.0.1:{port}/dreambooth/v1/jobs"
        reply = httpx.post(base, data={**XL_JOB, "overrides": "{}"}, files=upload, timeout=60)
        detail = reply.json()["detail"]
        assert reply.status_code == 400 and "preset sdxl-lora: its vae madebyollin/sdxl-vae-fp16-fix" in detail, reply.text
        assert '"vae": "Automatic"' in detail and "hf download madebyollin/sdxl-vae-fp16-fix" in detail
        assert httpx.get(base).json() == []
        unknown = httpx.post(base, data={**XL_JOB, "overrides": '{"vae": "../vae"}'}, files=upload, timeout=60)
        assert unknown.status_code == 400 and unknown.json()["detail"].startswith("overrides.vae: no VAE named")
        # the client's choice instead: a VAE the server lists, or the model's own ("Automatic")
        small = {"resolution": 64, "max_steps": 1, "use_8bit_adam": False, "gradient_accumulation": 1}
        for vae, expected in (("xl-vae", str(models / "VAE" / "xl-vae")), ("Automatic", None)):
            reply = httpx.post(base, data={**XL_JOB, "overrides": json.dumps({**small, "vae": vae})},
                               files=upload, timeout=60)
            assert reply.status_code == 200 and reply.json()["overrides"]["vae"] == vae, reply.text
            app.state.runner.cancel(reply.json()["id"])    # (its config is what counts here, not its training)
            job = app.state.store.get(reply.json()["id"])
            config = job_config(job.request, tmp_path / "out", tmp_path / "photos", str(models / "xl"))
            assert config.vae == expected


def test_a_job_on_a_single_file_trains_with_its_config(files, wide_sdxl, tmp_path):
    from types import SimpleNamespace

    from dreambooth.server.catalog import Catalog
    from dreambooth.server.jobs import JobStore, job_config
    from dreambooth.server.jobs_api import submit_job
    catalog = Catalog("toy", files, model_configs=[str(wide_sdxl)])
    store = JobStore(tmp_path / "data")
    photos(tmp_path / "photos")
    job = submit_job(store, SimpleNamespace(wake=lambda: None), catalog, catalog.models()[0],
                     instance_prompt="a sks square", model="xl.safetensors", photos_dir=str(tmp_path / "photos"))
    config = job_config(job.request, tmp_path / "out", tmp_path / "photos", job.request["model_spec"])
    assert config.model_config == str(wide_sdxl)


def test_a_vae_of_another_family_is_refused_at_submission_and_named_in_the_apis_terms(tiny_sd1, tmp_path):
    """A listed SDXL VAE (its latents scaled 0.13025) for an SD1 model: a job refused when submitted
    (it failed once started), and a switch to it names sd_vae and "Automatic", not a server path and --vae."""
    from dreambooth.server.app import ServerSettings
    from dreambooth.testing.tiny import _vae
    models = tmp_path / "models"
    shutil.copytree(tiny_sd1, models / "sd1")
    xl = _vae(seed=1)
    xl.register_to_config(scaling_factor=0.13025)
    xl.save_pretrained(models / "VAE" / "xlvae")
    upload = [("photos", (p.name, p.read_bytes(), "image/png")) for p in photos(tmp_path / "photos")]
    with served(ServerSettings(model="toy", data_dir=tmp_path / "data", models_dir=str(models))) as (app, port):
        reply = httpx.post(f"http://127.0.0.1:{port}/dreambooth/v1/jobs", files=upload, timeout=60,
                           data={"instance_prompt": "a sks square", "model": "sd1", "overrides": '{"vae": "xlvae"}'})
        assert reply.status_code == 400, reply.text
        assert reply.json()["detail"] == ("overrides.vae xlvae scales latents by 0.13025, the model sd1's VAE by 0.18215: "
                                          'a VAE of another family; send overrides {"vae": "Automatic"} for the model\'s own')
        http(port, "POST", "/sdapi/v1/options", json={"sd_model_checkpoint": "sd1"})
        reply = http(port, "POST", "/sdapi/v1/options", json={"sd_vae": "xlvae"})
        assert reply.status_code == 400 and "sd_vae xlvae: scales its latents by 0.13025" in reply.json()["detail"]
        assert str(models) not in reply.json()["detail"] and "--vae" not in reply.json()["detail"], reply.text


def test_a_job_of_the_toy_preset_trains_the_toy_not_the_loaded_model(tiny_sd1, tmp_path):
    """With another model loaded, preset toy and no model trained that model with the toy's recipe."""
    from types import SimpleNamespace

    from dreambooth.server.catalog import Catalog
    from dreambooth.server.jobs import JobStore
    from dreambooth.server.jobs_api import submit_job
    models = tmp_path / "models"
    shutil.copytree(tiny_sd1, models / "sd1")
    catalog = Catalog("toy", models)
    loaded = catalog.find_model("sd1")
    photos(tmp_path / "photos")
    store = JobStore(tmp_path / "data")
    for preset, trained in (("toy", "toy"), ("", "sd1")):
        job = submit_job(store, SimpleNamespace(wake=lambda: None), catalog, loaded, instance_prompt="a sks square",
                         preset=preset, photos_dir=str(tmp_path / "photos"))
        assert job.request["model"] == trained


@pytest.mark.skipif(torch.cuda.is_available(), reason="the refusal is of a machine without CUDA")
def test_a_job_this_machine_cannot_train_is_refused_at_submission(tiny_sdxl, tmp_path):
    """sdxl-lora's 8-bit Adam on a machine without CUDA: a 400 when submitted, in the API's words (what
    to send), by the trainer's own check; it was queued and failed when its turn came."""
    from types import SimpleNamespace

    from dreambooth.errors import UserError
    from dreambooth.server.catalog import Catalog
    from dreambooth.server.jobs import JobStore
    from dreambooth.server.jobs_api import submit_job
    models = tmp_path / "models"
    shutil.copytree(tiny_sdxl, models / "xl")
    catalog, store = Catalog("toy", models), JobStore(tmp_path / "data")
    photos(tmp_path / "photos")
    job = dict(instance_prompt="a sks square", preset="sdxl-lora", model="xl", photos_dir=str(tmp_path / "photos"))
    small = {"max_steps": 4, "resolution": 64, "vae": "Automatic"}
    with pytest.raises(UserError) as preset:
        submit_job(store, SimpleNamespace(wake=lambda: None), catalog, None, overrides=small, **job)
    assert str(preset.value).startswith("use_8bit_adam (of the sdxl-lora settings) needs a CUDA GPU")
    assert 'give overrides {"use_8bit_adam": false}' in str(preset.value) and "--" not in str(preset.value)
    with pytest.raises(UserError, match=r"^overrides\.use_8bit_adam needs a CUDA GPU"):
        submit_job(store, SimpleNamespace(wake=lambda: None), catalog, None, overrides={**small, "use_8bit_adam": True}, **job)
    with pytest.raises(UserError, match=r"^overrides\.mixed_precision fp16 needs a GPU; use bf16, auto or no"):
        submit_job(store, SimpleNamespace(wake=lambda: None), catalog, None,
                   overrides={**small, "use_8bit_adam": False, "mixed_precision": "fp16"}, **job)
    assert store.all() == []
    queued = submit_job(store, SimpleNamespace(wake=lambda: None), catalog, None,
                        overrides={**small, "use_8bit_adam": False}, **job)
    assert queued.state == "queued"
