"""Conformance with the tools users have, as their own code reads our outputs (A1111, kohya):
kohya metadata of LoRA files, LoRAs in the infotext and in prompts, ``--model-config`` for generate,
and the permissions of saved weights."""
from __future__ import annotations

import json
import os
import stat

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open

from conftest import run_cli
from dreambooth.generation.infotext import parse_generation_parameters, read_infotext
from dreambooth.models.hashes import lora_hash

TRAIN = ["--instance-prompt", "a sks dog", "--resolution", "32", "--max-steps", "2", "--method", "lora",
         "--learning-rate", "1e-2"]


def _metadata(path) -> dict:
    with safe_open(str(path), framework="pt") as f:
        return f.metadata()


def a1111_lora_version(metadata: dict) -> str:
    """A1111's rule (extensions-builtin/Lora/network.py, NetworkOnDisk.detect_version)."""
    if str(metadata.get("ss_base_model_version", "")).startswith("sdxl_"):
        return "SDXL"
    if str(metadata.get("ss_v2", "")) == "True":
        return "SD2"
    return "SD1" if metadata else "Unknown"


@pytest.fixture(scope="module")
def trained_loras(tiny_sd1, tiny_sd2, tiny_sdxl, dog_photos, tmp_path_factory):
    root = tmp_path_factory.mktemp("conformance")
    outputs = {}
    for family, model in (("sd1", tiny_sd1), ("sd2", tiny_sd2), ("sdxl", tiny_sdxl)):
        out = root / f"my_{family}_lora"
        code, _, err = run_cli("train", "--model", model, "--instance-dir", dog_photos, *TRAIN, "--output", out)
        assert code == 0, err
        outputs[family] = out
    return outputs


def test_kohya_files_carry_kohyas_metadata_and_a1111_files_each_family_right(trained_loras):
    expected = {"sd1": ("SD1", "sd_v1", "False"), "sd2": ("SD2", "sd_v2_v", "True"),
                "sdxl": ("SDXL", "sdxl_base_v1-0", "False")}
    for family, out in trained_loras.items():
        meta = _metadata(out / f"{out.name}.safetensors")
        version, base_version, v2 = expected[family]
        assert a1111_lora_version(meta) == version, meta
        assert meta["ss_base_model_version"] == base_version and meta["ss_v2"] == v2
        assert meta["ss_network_module"] == "networks.lora"
        assert meta["ss_network_dim"] == "4" and float(meta["ss_network_alpha"]) == 4.0
        assert meta["ss_output_name"] == out.name and meta["ss_max_train_steps"] == "2"
        assert meta["ss_num_train_images"] == "5" and float(meta["ss_learning_rate"]) == 1e-2
        assert "/" not in meta["ss_sd_model_name"]             # the base by name: no path of this machine
        assert meta["ss_v_parameterization"] == ("True" if family == "sd2" else "False")
        # Stability's ModelSpec, as kohya writes it, and the hash A1111 takes from the file instead of reading it
        assert meta["modelspec.architecture"] == {"sd1": "stable-diffusion-v1/lora", "sd2": "stable-diffusion-v2-768-v/lora",
                                                  "sdxl": "stable-diffusion-xl-v1-base/lora"}[family]
        assert meta["modelspec.title"] == out.name and meta["modelspec.resolution"] == "32x32"
        assert meta["modelspec.trigger_phrase"] == "a sks dog"
        assert meta["sshs_model_hash"][:12] == lora_hash(out / f"{out.name}.safetensors")


def test_infotext_names_the_lora_as_a1111_would_load_it(trained_loras, tmp_path):
    out = trained_loras["sd1"]
    code, stdout, err = run_cli("generate", "--model", out, "--prompt", "a sks dog", "--steps", "2", "--seed", "4",
                                "--width", "32", "--height", "32", "--output", tmp_path / "a")
    assert code == 0, err
    info = parse_generation_parameters(read_infotext(stdout.split()[0]))
    kohya = out / f"{out.name}.safetensors"
    # the prompt re-applies the LoRA when pasted into A1111; the hash is that of the file A1111 loads
    assert info["Prompt"] == f"a sks dog <lora:{out.name}:1>"
    assert info["Lora hashes"] == f"{out.name}: {lora_hash(kohya)}"
    assert lora_hash(kohya) != lora_hash(out / "pytorch_lora_weights.safetensors")


def test_lora_tags_in_prompts_resolve_by_name(trained_loras, tiny_sd1, tmp_path):
    out = trained_loras["sd1"]
    common = ["--model", tiny_sd1, "--steps", "2", "--seed", "4", "--width", "32", "--height", "32"]
    code, stdout, err = run_cli("generate", *common, "--prompt", "a sks dog", "--lora", out, "--output", tmp_path / "a")
    assert code == 0, err
    by_flag = stdout.split()[0]
    # a trained output is known by name (no path needed), as are files in --lora-dir
    code, stdout, err = run_cli("generate", *common, "--prompt", f"a sks dog <lora:{out.name}:1>",
                                "--output", tmp_path / "b")
    assert code == 0, err
    assert np.array_equal(np.asarray(Image.open(stdout.split()[0])), np.asarray(Image.open(by_flag)))
    loras = tmp_path / "loras"
    loras.mkdir()
    (loras / "style.safetensors").write_bytes((out / f"{out.name}.safetensors").read_bytes())
    code, stdout, err = run_cli("generate", *common, "--prompt", "a sks dog <lora:style:0.5>", "--lora-dir", loras,
                                "--output", tmp_path / "c")
    assert code == 0, err
    half = stdout.split()[0]
    assert parse_generation_parameters(read_infotext(half))["Prompt"] == "a sks dog <lora:style:0.5>"
    assert not np.array_equal(np.asarray(Image.open(half)), np.asarray(Image.open(by_flag)))
    code, _, err = run_cli("generate", *common, "--prompt", "a dog <lora:nobody:1>", "--lora-dir", loras,
                           "--output", tmp_path / "d")
    assert code == 2 and "<lora:nobody>" in err and "--lora-dir" in err and err.count("\n") == 1, err
    code, _, err = run_cli("generate", *common, "--prompt", "a dog <hypernet:x:1>", "--output", tmp_path / "d")
    assert code == 2 and "only <lora:" in err and err.count("\n") == 1


def test_generate_takes_model_config_for_an_uncached_single_file(tiny_sd1, tmp_path):
    from dreambooth.models.single_file import export_single_file
    single = export_single_file(tiny_sd1, tmp_path / "model.safetensors", "sd1", dtype=torch.float32)
    args = ["generate", "--model", single, "--prompt", "a dog", "--steps", "1", "--width", "32", "--height", "32"]
    code, _, err = run_cli(*args, "--output", tmp_path / "a")
    assert code == 2 and "--model-config" in err and err.count("\n") == 1, err
    code, stdout, err = run_cli(*args, "--model-config", tiny_sd1, "--output", tmp_path / "b")
    assert code == 0, err
    info = parse_generation_parameters(read_infotext(stdout.split()[0]))
    assert info["Model"] == "model" and len(info["Model hash"]) == 10


def test_saved_weights_are_readable_by_others(tiny_sd1, dog_photos, tmp_path):
    old = os.umask(0o022)
    try:
        lora, full = tmp_path / "lora", tmp_path / "full"
        code, _, err = run_cli("train", "--model", tiny_sd1, "--instance-dir", dog_photos, *TRAIN,
                               "--checkpoint-every", "1", "--output", lora)
        assert code == 0, err
        code, _, err = run_cli("train", "--model", tiny_sd1, "--instance-dir", dog_photos, "--instance-prompt",
                               "a sks dog", "--resolution", "32", "--max-steps", "1", "--method", "full",
                               "--export-single-file", "--output", full)
        assert code == 0, err
    finally:
        os.umask(old)
    files = sorted(lora.rglob("*.safetensors")) + sorted(full.rglob("*.safetensors"))
    assert len(files) >= 6
    for f in files:
        assert stat.S_IMODE(f.stat().st_mode) == 0o644, f
    assert json.loads((full / "training_args.json").read_text())["method"] == "full"


def test_a1111s_file_habits_upper_case_suffixes_and_sub_folders(trained_loras, tiny_sd1, tmp_path):
    """Files a stranger's A1111 folders hold: ``My Lora.SAFETENSORS`` in ``models/Lora/people/``, and a
    model of an upper-case suffix, load as their lower-case twins do."""
    from dreambooth.models.single_file import export_single_file
    out = trained_loras["sd1"]
    people = tmp_path / "Lora" / "people"
    people.mkdir(parents=True)
    (people / "My Lora.SAFETENSORS").write_bytes((out / f"{out.name}.safetensors").read_bytes())
    model = export_single_file(tiny_sd1, tmp_path / "models" / "Base.SAFETENSORS", "sd1")
    common = ["--model", model, "--model-config", tiny_sd1, "--steps", "2", "--seed", "4", "--width", "32",
              "--height", "32"]
    code, stdout, err = run_cli("generate", *common, "--prompt", "a sks dog <lora:My Lora:1>", "--lora-dir",
                                tmp_path / "Lora", "--output", tmp_path / "a")
    assert code == 0, err
    code, reference, err = run_cli("generate", *common, "--prompt", "a sks dog", "--lora", out / f"{out.name}.safetensors",
                                   "--output", tmp_path / "b")
    assert code == 0, err
    assert np.array_equal(np.asarray(Image.open(stdout.split()[0])), np.asarray(Image.open(reference.split()[0])))


def test_a_lora_dir_lists_no_model_parts_or_checkpoints(trained_loras, tiny_sd1, tmp_path):
    import shutil

    from dreambooth.generation.loras import LoraLibrary
    loras = tmp_path / "loras"
    shutil.copytree(tiny_sd1, loras / "a model")
    (loras / "run" / "checkpoints" / "checkpoint-000001").mkdir(parents=True)
    (loras / "run" / "checkpoints" / "checkpoint-000001" / "trainable.safetensors").write_bytes(b"")
    shutil.copy(trained_loras["sd1"] / f"{trained_loras['sd1'].name}.safetensors", loras / "style.safetensors")
    assert sorted(LoraLibrary([loras], use_registry=False)._scanned()) == ["style"]


def test_a_lora_a_damaged_file_or_another_file_as_a_model_says_what_it_is(trained_loras, tiny_sd1, tmp_path):
    out = trained_loras["sd1"]
    kohya = out / f"{out.name}.safetensors"
    from safetensors.torch import save_file
    save_file({"some.tensor": torch.zeros(2)}, str(tmp_path / "other.safetensors"))
    for model, needle in ((kohya, "a LoRA, not a model; give it as --lora"),
                          (tmp_path / "other.safetensors", "holds no Stable Diffusion UNet")):
        code, _, err = run_cli("generate", "--model", model, "--model-config", tiny_sd1, "--prompt", "x")
        assert code == 2 and needle in err and err.count("\n") == 1, err
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(kohya.read_bytes()[:-100])
    code, _, err = run_cli("generate", "--model", tiny_sd1, "--prompt", "x", "--lora", cut, "--steps", "1")
    assert code == 2 and "the file is damaged or not a safetensors file" in err and err.count("\n") == 1, err


def test_a_model_folder_missing_a_part_names_it(tiny_sd1, tmp_path):
    import shutil
    shutil.copytree(tiny_sd1, tmp_path / "novae")
    shutil.rmtree(tmp_path / "novae" / "vae")
    code, _, err = run_cli("generate", "--model", tmp_path / "novae", "--prompt", "x")
    assert code == 2 and "names vae, but the folder has no vae/" in err and "--vae" in err, err


def test_tokens_reads_a_lora_outputs_base(trained_loras):
    code, stdout, err = run_cli("tokens", "--model", trained_loras["sd1"], "--count", "3")
    lines = stdout.strip().splitlines()
    assert code == 0 and lines[0].startswith("token") and len(lines) >= 3, err    # (the tiny vocabulary has 2)


def test_a_single_file_that_lacks_parts_its_config_names_is_one_line(tiny_sdxl, tmp_path):
    """diffusers reads the tiny SDXL file as SD1 (its keys' shapes) and leaves SDXL's second text encoder
    empty: a one-line error, not an AttributeError far later."""
    from dreambooth.models.single_file import export_single_file
    path = export_single_file(tiny_sdxl, tmp_path / "xl.safetensors", "sdxl")
    code, _, err = run_cli("generate", "--model", path, "--model-config", tiny_sdxl, "--prompt", "x", "--steps", "1")
    assert code == 2 and err.count("\n") == 1 and "unexpected" not in err and "--model-config" in err, err


def test_a_model_folder_without_its_safety_checker_loads(tiny_sd1, tmp_path):
    """The 1.2 GB safety checker is often deleted from SD 1.5 folders; it is not loaded anyway."""
    import shutil
    folder = tmp_path / "no-checker"
    shutil.copytree(tiny_sd1, folder)
    index = json.loads((folder / "model_index.json").read_text())
    index["safety_checker"] = ["stable_diffusion", "StableDiffusionSafetyChecker"]
    (folder / "model_index.json").write_text(json.dumps(index))
    code, _, err = run_cli("generate", "--model", folder, "--prompt", "x", "--steps", "1", "--width", "32",
                           "--height", "32", "--output", tmp_path / "out")
    assert code == 0, err
