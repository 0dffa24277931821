"""Training jobs on the server: submitted with photos, watched, cancelled; a job survives ``kill -9``
of the server and a restart, and its model then appears in the model lists and generates. A
generation request during a job is served between two training steps."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from test_server import free_port, served

TOY_JOB = {"instance_prompt": "a sks square", "class_prompt": "a square", "preset": "toy"}


def photos(folder: Path) -> list[Path]:
    from dreambooth.toy.demo import write_instance_images
    from dreambooth.toy.world import Subject
    return write_instance_images(Subject("square", "green", "checker", "white"), folder, ("red", "blue", "red"))


def submit(base: str, files: list[Path], overrides: str, **fields) -> dict:
    form = {**TOY_JOB, "overrides": overrides, **fields}
    upload = [("photos", (p.name, p.read_bytes(), "image/png")) for p in files]
    reply = httpx.post(f"{base}/dreambooth/v1/jobs", data=form, files=upload, timeout=60)
    assert reply.status_code == 200, reply.text
    return reply.json()


def wait(base: str, job_id: str, until, timeout: float = 300) -> dict:
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            job = httpx.get(f"{base}/dreambooth/v1/jobs/{job_id}", timeout=10).json()
        except httpx.TransportError:
            time.sleep(0.3)
            continue
        if until(job):
            return job
        assert job["state"] not in ("failed", "cancelled"), job
        time.sleep(0.3)
    raise AssertionError(f"job {job_id} did not get there in {timeout} s: {job}")


def start_server(data: Path, port: int) -> subprocess.Popen:
    env = {**os.environ, "DREAMBOOTH_NO_PROGRESS": "1", "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen([sys.executable, "-m", "dreambooth", "serve", "--model", "toy", "--port", str(port),
                                "--data-dir", str(data)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/sdapi/v1/sd-models", timeout=2).status_code == 200:
                return process
        except httpx.TransportError:
            time.sleep(0.3)
    process.kill()
    raise AssertionError("the server did not start: " + process.stderr.read().decode()[-2000:])


class ServerProcess:
    """``dreambooth serve`` on the toy model in a process of its own, stopped and started again on the
    same port and data folder as a user would."""

    def __init__(self, data: Path):
        self.data, self.port = data, free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.process = start_server(data, self.port)

    def stop(self, sig: int) -> int:
        self.process.send_signal(sig)
        return self.process.wait(90)

    def start(self) -> None:
        self.process = start_server(self.data, self.port)


@pytest.fixture
def server_process(tmp_path):
    served_here = ServerProcess(tmp_path / "data")
    yield served_here
    served_here.process.kill()
    served_here.process.wait(30)


def test_a_job_survives_kill_9_and_its_model_generates(tmp_path, server_process):
    base = server_process.base
    job = submit(base, photos(tmp_path / "photos"),
                 '{"max_steps": 40, "checkpoint_every": 5, "num_class_images": 4, "class_steps": 5}', name="my_square")
    assert job["state"] in ("queued", "running") and job["max_steps"] == 40
    wait(base, job["id"], lambda j: j["step"] >= 12)
    server_process.stop(signal.SIGKILL)
    server_process.start()
    done = wait(base, job["id"], lambda j: j["state"] == "done")
    assert done["step"] == 40 and len(done["losses"]) == 40
    log = httpx.get(f"{base}/dreambooth/v1/jobs/{job['id']}/log").text
    assert "resuming from the last checkpoint" in log
    models = httpx.get(f"{base}/sdapi/v1/sd-models").json()
    assert done["output"]["name"] == "my_square"
    title = next(m["title"] for m in models if m["filename"] == done["output"]["path"])
    assert title == "my_square"
    reply = httpx.post(f"{base}/sdapi/v1/txt2img", timeout=120, json={
        "prompt": "a sks square on a yellow background", "steps": 5, "width": 32, "height": 32, "seed": 1,
        "override_settings": {"sd_model_checkpoint": title}})
    assert reply.status_code == 200, reply.text
    assert '"sd_model_name": "my_square"' in reply.json()["info"]


def test_lora_jobs_cancel_and_generation_between_steps(tmp_path):
    from dreambooth.server.app import ServerSettings
    pictures = photos(tmp_path / "photos")
    with served(ServerSettings(model="toy", data_dir=tmp_path / "data")) as (app, port):
        base = f"http://127.0.0.1:{port}"
        slow = submit(base, pictures, '{"max_steps": 400, "num_class_images": 2, "class_steps": 2, "checkpoint_every": 50}')
        wait(base, slow["id"], lambda j: j["step"] >= 3)
        started = time.monotonic()
        reply = httpx.post(f"{base}/sdapi/v1/txt2img", json={"prompt": "a red circle", "steps": 2, "width": 32,
                                                            "height": 32}, timeout=120)
        served_in = time.monotonic() - started
        job = httpx.get(f"{base}/dreambooth/v1/jobs/{slow['id']}").json()
        assert reply.status_code == 200 and job["state"] == "running" and job["step"] < 400   # between two steps
        print(f"a request during training waited {app.state.engine.gate.last_wait:.3f} s, answered in {served_in:.2f} s")
        assert app.state.engine.gate.last_wait < 5
        cancelled = httpx.post(f"{base}/dreambooth/v1/jobs/{slow['id']}/cancel").json()
        wait(base, slow["id"], lambda j: j["state"] == "cancelled", timeout=60) if cancelled["state"] != "cancelled" else None

        lora = submit(base, pictures, '{"max_steps": 4, "method": "lora", "num_class_images": 2, "class_steps": 2}')
        done = wait(base, lora["id"], lambda j: j["state"] == "done")
        names = [entry["name"] for entry in httpx.get(f"{base}/sdapi/v1/loras").json()]
        name = f"job-{lora['id']}"
        assert name in names and done["output"]["name"] == name, names
        log = httpx.get(f"{base}/dreambooth/v1/jobs/{lora['id']}/log").text
        assert "info: time: " in log and " training " in log and " saving " in log, log      # where its time went
        reply = httpx.post(f"{base}/sdapi/v1/txt2img", timeout=120,
                           json={"prompt": f"a sks square <lora:{name}:1>", "steps": 2, "width": 32, "height": 32})
        assert reply.status_code == 200, reply.text
        jobs = httpx.get(f"{base}/dreambooth/v1/jobs").json()
        assert [j["state"] for j in jobs] == ["cancelled", "done"]
        gone = httpx.delete(f"{base}/dreambooth/v1/jobs/{lora['id']}")           # asked: its LoRA goes too
        assert gone.status_code == 200 and not app.state.store.folder(lora["id"]).exists(), gone.text
        assert name not in [entry["name"] for entry in httpx.get(f"{base}/sdapi/v1/loras").json()]
        assert [j["id"] for j in httpx.get(f"{base}/dreambooth/v1/jobs").json()] == [slow["id"]]


@pytest.mark.parametrize("fields, overrides, needle", [
    ({}, '{"max_steps": 0}', "max_steps"),
    ({}, '{"learning_rate": "nan"}', "learning_rate"),
    ({}, '{"max_steps": "abc"}', "max_steps"),
    ({}, '{"keep_checkpoints": 1.5}', "keep_checkpoints"),
    ({}, '{"output": "/etc"}', "overrides.output"),
    ({}, '{"colour": 1}', "overrides.colour"),
    ({}, "not json", "overrides"),
    ({"preset": "../../etc/passwd"}, "{}", "preset"),
    ({"model": "../../etc/passwd"}, "{}", "model"),
    ({"instance_prompt": ""}, "{}", "instance_prompt: empty; give"),
    ({"name": "../up"}, "{}", "name"),
    ({}, '{"class_prompt": "a square"}', "overrides.class_prompt: a field of the request itself"),
    ({}, '{"max_steps": null}', "overrides.max_steps: null"),
    ({"name": "photos"}, "{}", "name: 'photos' is a folder of the job itself"),
    ({"name": "toy"}, "{}", "name: 'toy' is a listed model"),
    ({"name": "x" * 65}, "{}", "name: 65 characters; at most 64"),
    ({}, "[" * 100_000 + "]" * 100_000, "overrides"),
])
def test_bad_jobs_are_4xx_and_nothing_is_stored(tmp_path, fields, overrides, needle):
    from dreambooth.server.app import ServerSettings
    pictures = photos(tmp_path / "photos")
    with served(ServerSettings(model="toy", data_dir=tmp_path / "data")) as (app, port):
        base = f"http://127.0.0.1:{port}"
        form = {**TOY_JOB, "overrides": overrides, **fields}
        upload = [("photos", (p.name, p.read_bytes(), "image/png")) for p in pictures]
        reply = httpx.post(f"{base}/dreambooth/v1/jobs", data=form, files=upload, timeout=60)
        assert 400 <= reply.status_code < 500 and needle in reply.json()["detail"], reply.text
        assert httpx.get(f"{base}/dreambooth/v1/jobs").json() == []
        bad = httpx.post(f"{base}/dreambooth/v1/jobs", data=TOY_JOB, timeout=60,
                         files=[("photos", ("x.png", b"not an image", "image/png"))])
        assert bad.status_code == 400 and "photos[0] x.png" in bad.json()["detail"]
        assert ".upload-" not in bad.json()["detail"], bad.text      # no path of the server's own
        assert httpx.get(f"{base}/dreambooth/v1/jobs/nonexistent").status_code == 404


def test_a_damaged_job_store_is_one_line(tmp_path):
    from conftest import run_cli
    data = tmp_path / "data"
    data.mkdir()
    (data / "jobs.sqlite").write_bytes(b"this is not a database, it was copied half-way" * 100)
    code, _, err = run_cli("serve", "--data-dir", data, "--port", "1")
    assert code == 2 and "jobs.sqlite" in err and "not a job store" in err and err.count("\n") == 1, err


def test_a_jobs_own_checkpoint_settings_are_kept(tmp_path):
    from dreambooth.server.jobs import job_config
    request = {**TOY_JOB, "overrides": {"max_steps": 20}}
    chosen = job_config(request, tmp_path / "out", tmp_path, "toy")
    assert (chosen.checkpoint_every, chosen.keep_checkpoints) == (2, 2)       # the server's: every tenth, two kept
    request["overrides"] = {"max_steps": 20, "keep_checkpoints": 5}
    assert job_config(request, tmp_path / "out", tmp_path, "toy").keep_checkpoints == 5
    request["overrides"] = {"max_steps": 20, "checkpoint_every": 7, "keep_checkpoints": 0}
    asked = job_config(request, tmp_path / "out", tmp_path, "toy")
    assert (asked.checkpoint_every, asked.keep_checkpoints) == (7, 0)


def test_class_images_let_requests_in_and_a_cancel_outlives_a_restart(tmp_path):
    from dreambooth.server.app import ServerSettings
    from dreambooth.server.jobs import JobRunner, JobStore
    pictures = photos(tmp_path / "photos")
    with served(ServerSettings(model="toy", data_dir=tmp_path / "data")) as (app, port):
        base = f"http://127.0.0.1:{port}"
        job = submit(base, pictures, '{"max_steps": 10, "num_class_images": 40, "class_steps": 8}', name="twin")
        reply = httpx.post(f"{base}/dreambooth/v1/jobs", data={**TOY_JOB, "name": "twin"}, timeout=60,
                           files=[("photos", (p.name, p.read_bytes(), "image/png")) for p in pictures])
        assert reply.status_code == 400 and f"is job {job['id']}'s already" in reply.json()["detail"], reply.text
        store = app.state.store
        classes = store.output(store.get(job["id"])) / "class_images"
        deadline = time.time() + 120
        while len(list(classes.glob("class-*.png"))) < 2 and time.time() < deadline:
            time.sleep(0.2)
        reply = httpx.post(f"{base}/sdapi/v1/txt2img", json={"prompt": "a red circle", "steps": 2, "width": 32,
                                                            "height": 32}, timeout=120)
        made = len(list(classes.glob("class-*.png")))
        assert reply.status_code == 200 and made < 40, made          # served while the class images were made
        seen = httpx.get(f"{base}/dreambooth/v1/jobs/{job['id']}").json()
        assert seen["step"] == 0 and seen["phase"]["task"] == "class images" and seen["phase"]["of"] == 40, seen
        assert app.state.engine.gate.last_wait < 5, app.state.engine.gate.last_wait
        httpx.post(f"{base}/dreambooth/v1/jobs/{job['id']}/cancel")
        done = wait(base, job["id"], lambda j: j["state"] in ("cancelled", "cancelling"), timeout=60)
        wait(base, job["id"], lambda j: j["state"] == "cancelled", timeout=60) if done["state"] != "cancelled" else None
        assert len(list(classes.glob("class-*.png"))) < 40             # stopped between two batches, not at the end
        assert "cancelled" in httpx.get(f"{base}/dreambooth/v1/jobs/{job['id']}/log").text
    # a cancel the server could not finish before it died is finished when it starts again
    store = JobStore(tmp_path / "data2")
    queued = store.add({"instance_prompt": "x"}, "lora", 10)
    store.update(queued.id, state="cancelling")
    runner = JobRunner(store, None, lambda r: "toy", lambda p, m: [], lambda: None)
    runner.start()
    runner.shutdown()
    assert store.get(queued.id).state == "cancelled"


def test_a_clean_stop_checkpoints_the_step_and_a_second_server_is_refused(tmp_path, server_process):
    base, port, data = server_process.base, server_process.port, server_process.data
    env = {**os.environ, "DREAMBOOTH_NO_PROGRESS": "1"}
    for flags, needle in ((["--port", str(free_port()), "--data-dir", str(data)], "--data-dir"),
                          (["--port", str(port), "--data-dir", str(tmp_path / "other")], f"--port {port}")):
        second = subprocess.run([sys.executable, "-m", "dreambooth", "serve", "--model", "toy", *flags], env=env,
                                capture_output=True, text=True, timeout=120)
        assert second.returncode == 2 and needle in second.stderr and second.stderr.count("\n") == 1, second.stderr
    job = submit(base, photos(tmp_path / "photos"), '{"max_steps": 60, "checkpoint_every": 50, '
                 '"num_class_images": 2, "class_steps": 2}')
    wait(base, job["id"], lambda j: j["step"] >= 5)
    assert server_process.stop(signal.SIGTERM) in (0, -signal.SIGTERM)    # uvicorn raises it again once shut down
    stopped = [p.name for p in (data / "jobs" / job["id"] / f"job-{job['id']}" / "checkpoints").iterdir()]
    assert len(stopped) == 1 and stopped[0] != "checkpoint-50", stopped       # the step it stopped at
    server_process.start()
    done = wait(base, job["id"], lambda j: j["state"] == "done")
    assert done["step"] == 60 and len(done["losses"]) == 60
    log = httpx.get(f"{base}/dreambooth/v1/jobs/{job['id']}/log").text
    assert "stopped with the server at step" in log and "resuming from the last checkpoint" in log, log


def test_one_name_for_one_job_even_at_once_and_a_relative_data_folder(tmp_path, monkeypatch):
    from concurrent.futures import ThreadPoolExecutor

    from dreambooth.server.app import ServerSettings
    from dreambooth.server.jobs import JobStore
    pictures = photos(tmp_path / "photos")
    monkeypatch.chdir(tmp_path)
    # a job queued by a server started with another --model: it trains on the model it was queued with
    store = JobStore(Path("data"))
    queued = store.add({**TOY_JOB, "overrides": {"max_steps": 2, "num_class_images": 2, "class_steps": 2},
                        "model": "a model no longer listed", "model_spec": "toy", "name": "old"}, "full", 2)
    shutil.copytree(pictures[0].parent, store.folder(queued.id) / "photos")
    with served(ServerSettings(model="toy", data_dir="data")) as (app, port):       # relative, as by default
        base = f"http://127.0.0.1:{port}"
        done = wait(base, queued.id, lambda j: j["state"] == "done")
        assert done["name"] == "old"
        titles = [m["title"] for m in httpx.get(f"{base}/sdapi/v1/sd-models").json()]
        assert titles.count("old") == 1 and "old'" not in titles, titles         # listed once
        httpx.post(f"{base}/sdapi/v1/options", json={"sd_model_checkpoint": "old"}, timeout=120)
        refused = httpx.delete(f"{base}/dreambooth/v1/jobs/{queued.id}")
        assert refused.status_code == 400 and "the one loaded" in refused.json()["detail"], refused.text
        httpx.post(f"{base}/sdapi/v1/options", json={"sd_model_checkpoint": "toy"}, timeout=120)

        def post(_):
            return httpx.post(f"{base}/dreambooth/v1/jobs", timeout=60, data={
                **TOY_JOB, "name": "twin", "overrides": '{"max_steps": 400, "num_class_images": 2, "class_steps": 2}'},
                files=[("photos", (p.name, p.read_bytes(), "image/png")) for p in pictures])
        with ThreadPoolExecutor(4) as pool:
            replies = list(pool.map(post, range(4)))
        assert sorted(r.status_code for r in replies) == [200, 400, 400, 400], [r.text for r in replies]
        twin = next(r.json() for r in replies if r.status_code == 200)
        assert twin["name"] == "twin" and twin["model"] == "toy"
        httpx.post(f"{base}/dreambooth/v1/jobs/{twin['id']}/cancel")
        wait(base, twin["id"], lambda j: j["state"] == "cancelled", timeout=120)
        assert "cancel asked" in httpx.get(f"{base}/dreambooth/v1/jobs/{twin['id']}/log").text


def test_a_job_stopped_after_its_model_was_written_is_done_on_restart(tmp_path):
    """Stopped in its last validation (its model and a checkpoint of its last step written), a job
    restarts as done, not as a resume refused for a finished run."""
    import json

    from dreambooth.server.engine import DeviceGate
    from dreambooth.server.jobs import JobRunner, JobStore
    store = JobStore(tmp_path / "data")
    job = store.add({**TOY_JOB, "overrides": {"max_steps": 6}, "model_spec": "toy"}, "full", 6)
    output = store.output(job)
    (output / "checkpoints" / "checkpoint-000006").mkdir(parents=True)
    (output / "training_args.json").write_text(json.dumps({"steps_done": 6}))
    (store.folder(job.id) / "photos").mkdir(parents=True)
    store.update(job.id, state="running")
    done = []
    runner = JobRunner(store, DeviceGate(), lambda r: "toy", lambda p, m: [], lambda: done.append(1))
    runner.start()
    deadline = time.time() + 30
    while store.get(job.id).state != "done" and time.time() < deadline:
        time.sleep(0.1)
    runner.shutdown()
    assert store.get(job.id).state == "done" and store.get(job.id).step == 6 and done == [1]
    assert "its model was written before the server stopped" in (store.folder(job.id) / "log.txt").read_text()


def test_a_jobs_messages_name_the_fields_its_client_sent_and_only_those():
    """A warning about a setting the job's preset chose names the preset, not ``overrides.X`` (a client
    that sent only max_steps read of overrides.identifier_lr)."""
    from dreambooth.server.jobs import in_api_words
    message = "--identifier-lr trains the embeddings of 'sks'; --max-steps 5 and --class-prompt"
    request = {"preset": "toy", "overrides": {"max_steps": 5}}
    assert in_api_words(message, request) == ("identifier_lr (of the toy settings) trains the embeddings of 'sks'; "
                                              "overrides.max_steps 5 and class_prompt")
    assert in_api_words("--batch-size 0: too small") == "overrides.batch_size 0: too small"


def test_a_stop_ends_the_running_generation_and_refuses_the_waiting_ones(server_process):
    """SIGTERM with a long generation running and another waiting (clients that may be gone): the
    server stops in seconds, not when they are done (uvicorn waits for every open request)."""
    import threading
    base, replies = server_process.base, []
    body = {"prompt": "a square", "steps": 150, "width": 256, "height": 256}

    def ask():
        try:
            replies.append(httpx.post(f"{base}/sdapi/v1/txt2img", json=body, timeout=300))
        except httpx.TransportError as exc:
            replies.append(exc)
    askers = [threading.Thread(target=ask) for _ in range(2)]
    for asker in askers:
        asker.start()
        time.sleep(0.5)
    deadline = time.time() + 60
    while httpx.get(f"{base}/sdapi/v1/progress", timeout=10).json()["state"]["sampling_step"] < 1:
        assert time.time() < deadline, "the generation did not start"
        time.sleep(0.2)
    started = time.time()
    assert server_process.stop(signal.SIGTERM) in (0, -signal.SIGTERM)
    assert time.time() - started < 30
    for asker in askers:
        asker.join(30)
    codes = sorted(r.status_code for r in replies if isinstance(r, httpx.Response))
    assert codes == [200, 503], replies               # the running one's image so far; the waiting one refused
    refused = next(r for r in replies if isinstance(r, httpx.Response) and r.status_code == 503)
    assert refused.json()["detail"].startswith("the server is stopping"), refused.text
    assert refused.headers["retry-after"].isdigit(), refused.headers      # not the client's fault: try again


def test_a_job_and_a_request_never_run_at_once_but_between_steps():
    """The device gate: a job starts once the request under way is done (diffusers' loading swaps the
    default dtype, ``torch.nn.init`` and ``nn.Module.register_parameter`` for the whole process while it
    builds a model: a LoRA or a model built in another thread then had meta or uninitialised weights), and
    a request that comes during the job runs only in ``between_steps``, never beside a step."""
    import threading

    from dreambooth.server.engine import DeviceGate
    gate, events = DeviceGate(), []
    in_request, job_started = threading.Event(), threading.Event()

    def request(name, hold: threading.Event | None = None):
        with gate.request():
            events.append(f"{name} in")
            if hold is not None:
                in_request.set()
                hold.wait(10)
            events.append(f"{name} out")

    release = threading.Event()
    first = threading.Thread(target=request, args=("request 1", release))
    first.start()
    assert in_request.wait(10)

    def job():
        with gate.training():
            events.append("job in")
            job_started.set()
            deadline = time.time() + 10               # a step, long enough for the second request to come
            while not gate._waiting and time.time() < deadline:
                time.sleep(0.05)
            time.sleep(0.2)                           # ... and to be kept waiting
            events.append("step done")
            gate.between_steps()
            events.append("job out")

    trainer = threading.Thread(target=job)
    trainer.start()
    time.sleep(0.3)
    assert not job_started.is_set()                   # request 1 is still under way
    release.set()
    assert job_started.wait(10)
    second = threading.Thread(target=request, args=("request 2",))
    second.start()
    for thread in (first, trainer, second):
        thread.join(10)
    assert events == ["request 1 in", "request 1 out", "job in", "step done", "request 2 in", "request 2 out",
                      "job out"]


def test_a_job_cancelled_while_it_waits_for_the_device_loads_nothing(tmp_path, monkeypatch):
    """A job waits for the request under way before it loads its models; a cancel asked meanwhile ends it
    there, not after a model load (minutes for SDXL) and a first step."""
    import threading

    from dreambooth.server import jobs
    from dreambooth.server.engine import DeviceGate
    trained = []
    monkeypatch.setattr(jobs, "train", lambda *a, **k: trained.append(1))
    store = jobs.JobStore(tmp_path / "data")
    job = store.add({**TOY_JOB, "overrides": {"max_steps": 6}, "model_spec": "toy"}, "full", 6)
    (store.folder(job.id) / "photos").mkdir(parents=True)
    gate, release, held = DeviceGate(), threading.Event(), threading.Event()

    def request():
        with gate.request():
            held.set()
            release.wait(20)
    busy = threading.Thread(target=request)
    busy.start()
    assert held.wait(10)
    runner = jobs.JobRunner(store, gate, lambda r: "toy", lambda p, m: [], lambda: None)
    runner.start()
    deadline = time.time() + 20
    while store.get(job.id).state != "running" and time.time() < deadline:
        time.sleep(0.05)
    runner.cancel(job.id)
    release.set()
    while store.get(job.id).state != "cancelled" and time.time() < deadline:
        time.sleep(0.05)
    runner.shutdown()
    busy.join(10)
    assert store.get(job.id).state == "cancelled" and trained == []


def test_a_jobs_messages_say_what_to_send_not_which_flag_to_give():
    """A switch's off flag is the override a client sends; a setting the server chooses is named as such."""
    from dreambooth.server.jobs import in_api_words
    message = "--use-8bit-adam needs CUDA; give --no-use-8bit-adam where a preset sets it"
    assert in_api_words(message, {"preset": "sdxl-lora", "overrides": {}}) == (
        'use_8bit_adam (of the sdxl-lora settings) needs CUDA; give overrides {"use_8bit_adam": false} where a preset sets it')
    assert in_api_words("metrics off: --dino-model x/y: not cached", {"overrides": {}}) == \
        "metrics off: the server's DINO model x/y: not cached"
    assert in_api_words("--no-such-flag") == "--no-such-flag"      # not a setting: left as it is


def test_a_cancel_asked_again_answers_the_job_as_it_is(tmp_path):
    """A client retrying its cancel (a timeout, a double click) gets the job, not a 400; an ended job
    that was never cancelled still says why nothing is cancelled."""
    from fastapi.testclient import TestClient

    from dreambooth.server.app import ServerSettings, create_app
    app = create_app(ServerSettings(model="toy", data_dir=tmp_path / "data"))
    client, store = TestClient(app), app.state.store          # (no lifespan: the runner runs nothing)
    queued, stopping, done = (store.add({"instance_prompt": "x"}, "lora", 10) for _ in range(3))
    store.update(stopping.id, state="cancelling")
    store.update(done.id, state="done")
    for _ in range(2):
        reply = client.post(f"/dreambooth/v1/jobs/{queued.id}/cancel")
        assert reply.status_code == 200 and reply.json()["state"] == "cancelled", reply.text
    reply = client.post(f"/dreambooth/v1/jobs/{stopping.id}/cancel")
    assert reply.status_code == 200 and reply.json()["state"] == "cancelling", reply.text
    reply = client.post(f"/dreambooth/v1/jobs/{done.id}/cancel")
    assert reply.status_code == 400 and reply.json()["detail"].startswith(f"job {done.id}: already done"), reply.text
