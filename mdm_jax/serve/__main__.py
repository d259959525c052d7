"""``python -m mdm_jax.serve --workdir=DIR [--config=configs/x.py] [--t5_dir=DIR] [--port=7860]``."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m mdm_jax.serve", description=__doc__)
    p.add_argument("--workdir", required=True, help="our run directory, or a converted ml-mdm checkpoint folder")
    p.add_argument("--config", default=None, help="our runs: the config file (default: the run's config.json)")
    p.add_argument("--t5_dir", default=None, help="converted text models: local FLAN-T5 folder (+ t5.vocab)")
    p.add_argument("--tokenizer_path", default="", help="converted text models: ml-mdm's t5.vocab elsewhere")
    p.add_argument("--host", default="127.0.0.1", help="0.0.0.0 to serve other machines")
    p.add_argument("--port", type=int, default=7860)
    p.add_argument("--steps", type=int, default=50, help="default number of steps in the page")
    p.add_argument("--max_queue", type=int, default=32, help="requests waiting beyond this are refused")
    args = p.parse_args(argv)
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    from mdm_jax.serve.app import build_app
    from mdm_jax.serve.backends import load_backend

    try:
        backend = load_backend(args.workdir, args.config, args.t5_dir, args.tokenizer_path)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    demo = build_app(backend, default_steps=args.steps)
    demo.queue(max_size=args.max_queue, default_concurrency_limit=1)
    demo.launch(server_name=args.host, server_port=args.port, show_error=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
