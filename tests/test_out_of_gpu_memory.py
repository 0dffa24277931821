"""Running out of GPU memory is not a bug of ours: the CLI says so in one line naming what to try
(exit 2, not "please report it"), and the server answers 503 naming the same, not a 500. The
allocator's refusal is raised here by hand: CI has no GPU."""
import torch
from fastapi.testclient import TestClient

from conftest import run_cli

REFUSED = "CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 7.45 GiB total capacity)\nmore lines"


def _refuse(*args, **kwargs):
    raise torch.OutOfMemoryError(REFUSED)


def test_generate_out_of_gpu_memory_is_one_line_naming_medvram(tiny_sd1, tmp_path, monkeypatch):
    from dreambooth.cli import generate as generate_cli
    monkeypatch.setattr(generate_cli, "generate", _refuse)
    code, out, err = run_cli("generate", "--model", tiny_sd1, "--prompt", "a dog", "--steps", "1", "--width", "32",
                             "--height", "32", "--output", tmp_path / "o")
    lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert code == 2 and len(lines) == 1, err
    assert "out of GPU memory (CUDA out of memory. Tried to allocate 2.00 GiB" in lines[0]
    assert "--medvram" in lines[0] and "report" not in lines[0] and "Traceback" not in err


def test_the_server_answers_503_naming_medvram(tiny_sd1, tmp_path, monkeypatch):
    from dreambooth.server.app import ServerSettings, create_app
    app = create_app(ServerSettings(model=str(tiny_sd1), data_dir=tmp_path / "data"))
    monkeypatch.setattr(app.state.engine, "generate", _refuse)
    answer = TestClient(app, raise_server_exceptions=False).post("/sdapi/v1/txt2img", json={"prompt": "a dog", "steps": 1})
    assert answer.status_code == 503
    assert "out of GPU memory" in answer.json()["detail"] and "--medvram" in answer.json()["detail"]
