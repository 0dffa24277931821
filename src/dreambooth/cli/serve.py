"""``dreambooth serve``: the A1111-compatible API and training jobs over HTTP (FastAPI + uvicorn)."""
from __future__ import annotations

import re
from pathlib import Path

import click

from ..errors import UserError
from ..toy.backdrops import toy_transforms, uses_toy_preset


def _transforms(preset: str | None, model: str) -> list:
    return toy_transforms() if uses_toy_preset(preset, model) else []


@click.command("serve", context_settings={"show_default": True})
@click.option("--host", default="127.0.0.1", help="Address to bind (--listen: 0.0.0.0).")
@click.option("--port", default=7860, type=click.IntRange(1, 65535), help="Port.")
@click.option("--listen", is_flag=True, help="Bind 0.0.0.0, reachable from other machines (needs --api-auth).")
@click.option("--insecure", is_flag=True, help="Allow --listen without --api-auth.")
@click.option("--api-auth", default=None, help="HTTP Basic credentials user:pass[,user2:pass2], checked on every route.")
@click.option("--model", default="toy", help="The checkpoint loaded first (folder, .safetensors, hub id, toy).")
@click.option("--models-dir", type=click.Path(file_okay=False), help="Folder of checkpoints (and VAE/ for VAEs) to list.")
@click.option("--model-config", "model_configs", multiple=True, metavar="FOLDER_OR_HUB_ID",
              help="The configs single-file checkpoints of its family (SD 1.x, SD 2.x or SDXL) load with: a diffusers "
              "model folder or cached hub id; one per family, repeatable. Default: a diffusers folder of that family "
              "that the server lists (--model, --models-dir).")
@click.option("--loras-dir", type=click.Path(file_okay=False), help="Folder of LoRA files and LoRA outputs to list.")
@click.option("--data-dir", default="dreambooth-data", type=click.Path(file_okay=False, path_type=Path),
              help="Jobs, uploads and their outputs.")
@click.option("--cors-allow-origins", "--cors-allow-origin", "cors", multiple=True,
              help="Allow browser requests (with credentials) from these origins, comma-separated as in A1111 "
              "(off by default).")
@click.option("--cors-allow-origins-regex", "cors_regex", default=None,
              help="Allow browser requests from origins matching this regular expression (as in A1111).")
@click.option("--device", default=None, help="Device (cuda, cuda:1, cpu). Default: the best available.")
@click.option("--medvram", is_flag=True, help="For a GPU short of memory: the text encoders, the UNet and the VAE "
              "take turns on it while generating (the same images; each batch moves the parts).")
@click.option("--no-ui", is_flag=True, help="Serve the APIs only, without the web UI at /.")
def serve_command(host, port, listen, insecure, api_auth, model, models_dir, model_configs, loras_dir, data_dir, cors,
                  cors_regex, device, medvram, no_ui):
    """Serve the AUTOMATIC1111 API (/sdapi/v1) and training jobs (/dreambooth/v1/jobs)."""
    import uvicorn

    from ..server.app import ServerSettings, check_port_free, create_app, parse_auth
    if listen:
        host = "0.0.0.0"
    if host not in ("127.0.0.1", "localhost", "::1") and not api_auth and not insecure:
        raise UserError(f"--listen/--host {host}: refusing to serve other machines without --api-auth user:pass "
                        "(or --insecure)")
    parse_auth(api_auth)
    if cors_regex is not None:
        try:
            re.compile(cors_regex)
        except re.error as exc:
            raise UserError(f"--cors-allow-origins-regex {cors_regex}: not a regular expression ({exc})") from None
    check_port_free(host, port)            # before the model loads (create_app holds --data-dir before it too)
    flags = {"host": host, "port": port, "listen": listen, "api_auth": bool(api_auth), "model": model,
             "models_dir": models_dir, "model_config": list(model_configs), "loras_dir": loras_dir,
             "data_dir": str(data_dir), "device": device, "medvram": medvram,
             "cors_allow_origins": ",".join(cors) or None, "cors_allow_origins_regex": cors_regex}
    app = create_app(ServerSettings(model=model, data_dir=data_dir, models_dir=models_dir, loras_dir=loras_dir,
                                    model_configs=list(model_configs), api_auth=api_auth, cors_origins=list(cors),
                                    cors_origin_regex=cors_regex,
                                    device=device, medvram=medvram, transforms=_transforms, flags=flags))
    if not no_ui:
        from ..ui.app import mount_ui
        mount_ui(app)
    engine = app.state.engine
    shown = "127.0.0.1" if host == "0.0.0.0" else host
    click.echo(f"serving {engine.entry.title} on {engine.device} at http://{shown}:{port}"
               + (" (and every address of this machine: 0.0.0.0)" if host == "0.0.0.0" else ""), err=True)
    click.echo(("" if no_ui else f"  web UI: http://{shown}:{port}/\n")
               + f"  A1111 API: http://{shown}:{port}/sdapi/v1   training jobs: http://{shown}:{port}/dreambooth/v1/jobs"
               f"   docs: http://{shown}:{port}/docs", err=True)
    click.echo(f"  {len(app.state.catalog.models())} model(s), {len(app.state.catalog.loras())} LoRA(s); "
               f"jobs in {data_dir}" + ("; HTTP Basic auth on" if api_auth else ""), err=True)
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning"))
    stop = server.handle_exit

    def handle_exit(sig, frame):            # before uvicorn waits for the open requests: end them
        engine.close()
        stop(sig, frame)
    server.handle_exit = handle_exit
    server.run()


def register(group: click.Group) -> None:
    group.add_command(serve_command)
