"""The page: a gradio Blocks app around a ``Backend``, streaming every resolution's previews while it denoises.

Gradio, as ml-mdm's own demo uses: a maintained library whose queue serialises GPU/TPU work across concurrent
users (each waits with its position shown), whose generator handlers stream intermediate images to the page, and
whose ``gr.Error`` puts a message in the page instead of a traceback.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

from mdm_jax.serve.backends import Backend, to_uint8

METHODS = ("ddim", "ddpm")
THRESHOLDS = ("dynamic_if", "dynamic", "clip", "none")


def run_request(backend: Backend, prompt: str, class_name: str | None, guidance_weight: float, num_steps: int,
                method: str, threshold: str, seed: int, num_images: int,
                previews: int = 10) -> Iterator[tuple[list[np.ndarray], str]]:
    """Validate one request and yield (uint8 batch per level, status line) as the sampler goes."""
    num_images, num_steps = int(num_images), int(num_steps)
    if not 1 <= num_images <= 16:
        raise ValueError(f"number of images must be 1..16, got {num_images}")
    if not 1 <= num_steps <= 1000:
        raise ValueError(f"steps must be 1..1000, got {num_steps}")
    if method not in METHODS or threshold not in THRESHOLDS:
        raise ValueError(f"sampler must be one of {METHODS} and thresholding one of {THRESHOLDS}")
    if backend.conditioning == "text":
        if not prompt or not prompt.strip():
            raise ValueError("enter a prompt: this model is text-conditioned")
        conditions: list[Any] = [prompt.strip()] * num_images
    elif backend.conditioning == "class":
        if class_name not in backend.class_names:
            raise ValueError(f"choose a class (one of {len(backend.class_names)})")
        conditions = [backend.class_names.index(class_name)] * num_images
    else:
        conditions = [None] * num_images
    every = max(1, num_steps // max(1, previews))
    for out in backend.previews(conditions, guidance_weight=float(guidance_weight), num_steps=num_steps,
                                method=method, eta=0.0, threshold=threshold, seed=int(seed), preview_every=every):
        status = ("done" if out["done"] else "denoising") + f": step {out['step']}/{out['num_steps']}"
        yield [to_uint8(x) for x in out["levels"]], status


def build_app(backend: Backend, *, default_steps: int = 50, default_guidance: float = 7.5) -> Any:
    import gradio as gr

    res = backend.resolutions
    with gr.Blocks(title="mdm-jax: Matryoshka Diffusion sampling") as demo:
        gr.Markdown(f"## Matryoshka Diffusion Models (mdm-jax)\n{backend.description}. Every resolution "
                    f"({' / '.join(f'{r} px' for r in res)}) is denoised jointly; previews show the current x0 "
                    f"estimate of each. Guidance weight: ml-mdm's meaning (p_u + w (p_c - p_u); 1 = no guidance).")
        with gr.Row():
            with gr.Column(scale=1):
                prompt = gr.Textbox(label="Prompt", lines=2, visible=backend.conditioning == "text",
                                    elem_id="prompt")
                klass = gr.Dropdown(list(backend.class_names), label="Class", elem_id="class",
                                    value=backend.class_names[0] if backend.class_names else None,
                                    visible=backend.conditioning == "class")
                guidance = gr.Slider(0.0, 20.0, value=default_guidance, step=0.5, label="Guidance weight",
                                     elem_id="guidance")
                steps = gr.Slider(1, 250, value=default_steps, step=1, label="Steps", elem_id="steps")
                method = gr.Dropdown(list(METHODS), value="ddim", label="Sampler", elem_id="sampler")
                threshold = gr.Dropdown(list(THRESHOLDS), value="dynamic_if", label="Thresholding",
                                        elem_id="threshold")
                seed = gr.Number(value=0, precision=0, label="Seed", elem_id="seed")
                num = gr.Slider(1, 16, value=4, step=1, label="Number of images", elem_id="num_images")
                button = gr.Button("Generate", variant="primary", elem_id="generate")
            with gr.Column(scale=2):
                status = gr.Markdown("", elem_id="status")
                galleries = [gr.Gallery(label=f"{r} px", columns=4, height="auto", elem_id=f"level{i}",
                                        format="png") for i, r in enumerate(res)]

        def handler(prompt, class_name, guidance_weight, num_steps, method, threshold, seed, num_images):
            try:
                for levels, line in run_request(backend, prompt, class_name, guidance_weight, num_steps, method,
                                                threshold, seed, num_images):
                    yield [*[list(batch) for batch in levels], line]
            except ValueError as e:  # bad input: shown in the page
                raise gr.Error(str(e)) from e

        button.click(handler, [prompt, klass, guidance, steps, method, threshold, seed, num], [*galleries, status],
                     concurrency_limit=1)
    return demo
