"""``healthagent model …``: run a HealthGPT model spec directly (no server), e.g. against the
released weights or the official fixtures."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer

from serving.cli.common import fail

model_app = typer.Typer(help="Run a HealthGPT model spec in this process.", no_args_is_help=True)

SpecOption = Annotated[
    str, typer.Option("--spec", help="Model spec YAML, or 'tiny' for the seeded demo model.")
]
ImageOption = Annotated[Path | None, typer.Option("--image", help="An image file (PNG, JPEG, ...).")]
PluginOption = Annotated[str, typer.Option("--plugin", help="Plugin name from the spec.")]
JsonFlag = Annotated[bool, typer.Option("--json", help="Print one JSON object.")]
AdapterOption = Annotated[
    Path | None,
    typer.Option("--adapter", help="An adapter folder (healthagent adapters train) serving --plugin."),
]


def load_model(spec: str, adapter: Path | None = None, plugin: str = "", data_dir: Path = Path("var")):
    """The model of ``spec`` ('tiny' or a YAML path), with ``plugin`` served by ``adapter`` if given."""
    from models.healthgpt import HealthGPT
    from models.tiny import resolve_spec

    try:
        model_spec = resolve_spec(spec, data_dir.resolve() / "models")
        if adapter is not None:
            from models.adapters import with_adapter

            model_spec = with_adapter(model_spec, plugin, adapter)
        return HealthGPT(model_spec)
    except (FileNotFoundError, ValueError, KeyError) as exc:
        fail(f"cannot load model: {exc}")


def _image(path: Path | None):
    if path is None:
        return None
    from tools.images import UnsupportedImage, decode_image

    try:
        return decode_image(path.read_bytes())
    except FileNotFoundError:
        fail(f"image not found: {path}")
    except UnsupportedImage as exc:
        fail(f"{path}: {exc}")


def _call(
    spec: str, image: Path | None, run: Callable, adapter: Path | None = None, plugin: str = ""
) -> tuple:
    """Load the model and the image, run, and turn a model-side ValueError into a clear exit."""
    picture = _image(image)  # a bad file is named before the model takes its time to load
    model = load_model(spec, adapter, plugin)
    try:
        return model, run(model, picture)
    except (ValueError, FileNotFoundError) as exc:
        fail(str(exc))


def _emit(payload: dict, as_json: bool) -> None:
    if as_json:
        typer.echo(json.dumps(payload))
    else:
        for key, value in payload.items():
            typer.echo(f"{key}: {value}")


@model_app.command()
def ask(
    question: Annotated[str, typer.Option("--question", help="The question or instruction.")],
    spec: SpecOption = "tiny",
    image: ImageOption = None,
    plugin: PluginOption = "comprehension",
    max_new_tokens: Annotated[int, typer.Option(min=1)] = 64,
    adapter: AdapterOption = None,
    as_json: JsonFlag = False,
) -> None:
    """Greedy answer: the generated token ids and their text."""
    from tools.healthgpt import readable

    model, answer = _call(
        spec,
        image,
        lambda m, p: m.ask(question, p, plugin=plugin, max_new_tokens=max_new_tokens),
        adapter,
        plugin,
    )
    _emit(
        {
            "text": readable(answer.text),  # the ids below keep what the model emitted
            "token_ids": answer.token_ids,
            "model": model.spec.name,
            "plugin": plugin,
            "adapter_version": model.spec.adapter_version,
            "prompt_tokens": answer.prompt_tokens,
            "seconds": round(answer.seconds, 4),
        },
        as_json,
    )


@model_app.command()
def score(
    question: Annotated[str, typer.Option("--question")],
    answer: Annotated[str, typer.Option("--answer", help="The answer to score (e.g. one choice).")],
    spec: SpecOption = "tiny",
    image: ImageOption = None,
    plugin: PluginOption = "comprehension",
    adapter: AdapterOption = None,
    as_json: JsonFlag = False,
) -> None:
    """Log-probability of each answer token (the answer followed by the template's end separator)."""
    _, result = _call(spec, image, lambda m, p: m.score(question, answer, p, plugin=plugin), adapter, plugin)
    _emit(
        {
            "answer_token_ids": result.answer_token_ids,
            "logprobs": result.logprobs,
            "sum_logprob": result.sum_logprob,
        },
        as_json,
    )


@model_app.command()
def image(
    instruction: Annotated[str, typer.Option("--instruction", help="e.g. 'Reconstruct the image.'")],
    out: Annotated[Path, typer.Option("--out", help="Where to write the PNG.")],
    spec: SpecOption = "tiny",
    image: ImageOption = None,
    plugin: PluginOption = "generation",
    as_json: JsonFlag = False,
) -> None:
    """Generate an image (reconstruction, CT<->MRI, super-resolution, text-to-image)."""
    _, (generated, indices) = _call(spec, image, lambda m, p: m.generate_image(instruction, p, plugin=plugin))
    out.parent.mkdir(parents=True, exist_ok=True)
    generated.save(out)
    _emit({"out": str(out), "size": list(generated.size), "vq_indices": len(indices)}, as_json)


@model_app.command("vq-decode")
def vq_decode(
    vqgan: Annotated[Path, typer.Option("--vqgan", help="taming folder with last.ckpt and model.yaml.")],
    indices: Annotated[Path, typer.Option("--indices", help="JSON list of VQ indices (row-major).")],
    out: Annotated[Path, typer.Option("--out", help="Where to write the PNG.")],
) -> None:
    """Decode VQ indices to an image with the VQGAN (the official post-processing)."""
    from models.vqgan import load_vqgan, to_uint8_image

    try:
        values = json.loads(indices.read_text())
        model = load_vqgan(vqgan)
        decoded = model.decode_indices(values, model.grid)
    except FileNotFoundError as exc:
        fail(str(exc))
    except (ValueError, json.JSONDecodeError) as exc:
        fail(f"{indices}: {exc}")
    out.parent.mkdir(parents=True, exist_ok=True)
    to_uint8_image(decoded).save(out)
    typer.echo(str(out))


@model_app.command("random")
def random_model(
    preset: Annotated[str, typer.Option("--preset", help="m3 | l14 | xl32: the released model to copy.")],
    out: Annotated[Path, typer.Option("--out", help="A new folder for the spec and the weights.")],
    layers: Annotated[
        int | None, typer.Option("--layers", min=1, help="Decoder layers (default: the released depth).")
    ] = None,
    vision_layers: Annotated[
        int | None, typer.Option("--vision-layers", min=2, help="CLIP layers (default: 24).")
    ] = None,
    dtype: Annotated[str, typer.Option("--dtype", help="float32 | bfloat16 | float16")] = "float32",
    seed: Annotated[int, typer.Option("--seed")] = 0,
    no_vqgan: Annotated[bool, typer.Option("--no-vqgan", help="Skip the VQGAN (no image tasks).")] = False,
) -> None:
    """Write random weights at a released model's true shapes (widths, heads, vocabulary with the VQ
    tokens, CLIP-L/14-336, plugins at their ranks, the VQGAN) in the released formats, for benchmarks at
    real sizes. --layers cuts depth only. Prints the spec path; answers are noise (demo_weights)."""
    from models.random_weights import build_random

    try:
        spec = build_random(
            preset,
            out,
            layers=layers,
            vision_layers=vision_layers,
            dtype=dtype,
            seed=seed,
            with_vqgan=not no_vqgan,
            progress=lambda step: typer.echo(f"  writing {step}", err=True),
        )
    except (ValueError, FileExistsError) as exc:
        fail(str(exc))
    typer.echo(str(spec))
