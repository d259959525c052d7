"""Video data: procedural moving shapes, a WebVid-style folder decoded with PyAV through the real grain pipeline
(frame sampling, captions CSV, unreadable files skipped and counted, resumable iterator), GIF/MP4 writing."""

from __future__ import annotations

import numpy as np
import pytest

from mdm_jax.data import create_dataset, procedural
from mdm_jax.data.video import MovingShapesSource, VideoFolderSource, flip_frames, mosaic, unmosaic

av = pytest.importorskip("av")
from mdm_jax import video_io  # noqa: E402


def test_moving_shapes_clip_moves_as_captioned():
    src = MovingShapesSource(64, frames=16, num_examples=50)
    for i in range(8):
        item = src[i]
        frames = unmosaic(item["image"], 16).astype(np.float32)  # (16, 16, 16, 3)
        colour = item["caption"].split()[1]
        direction = item["caption"].split()[-1]
        rgb = np.asarray(procedural.COLOURS[colour], np.float32)
        mask = np.all(np.abs(frames - rgb) < 1, axis=-1)  # shape pixels per frame
        ys, xs = np.nonzero(mask[0])
        ye, xe = np.nonzero(mask[-1])
        dx, dy = xe.mean() - xs.mean(), ye.mean() - ys.mean()
        want = {"left": dx < -3, "right": dx > 3, "up": dy < -3, "down": dy > 3}[direction]
        assert want, (item["caption"], dx, dy)
    np.testing.assert_array_equal(src[3]["image"], MovingShapesSource(64, 16, 50)[3]["image"])  # deterministic


def test_mosaic_flip_flips_each_frame():
    frames = np.random.default_rng(0).integers(0, 255, size=(4, 6, 6, 3), dtype=np.uint8)
    flipped = unmosaic(flip_frames(mosaic(frames), 4), 4)
    np.testing.assert_array_equal(flipped, frames[:, :, ::-1])


@pytest.fixture(scope="module")
def video_dir(tmp_path_factory):
    """Three real MP4s (frame k filled with value 10*k in channel 0), one corrupt file, a captions CSV."""
    d = tmp_path_factory.mktemp("videos")
    (d / "shard0").mkdir()
    for v in range(3):
        frames = np.zeros((20, 24, 32, 3), np.uint8)
        frames[..., 0] = (10 * np.arange(20))[:, None, None]
        frames[..., 1] = 40 * v
        video_io.write_mp4(frames, d / "shard0" / f"vid{v}.mp4", fps=10)
    (d / "shard0" / "broken.mp4").write_bytes(b"not a video at all" * 10)
    (d / "uncaptioned.mp4").write_bytes(b"x")
    (d / "captions.csv").write_text("videoid,name\nvid0,a red fox\nvid1,a green field\nvid2,a blue sea\n"
                                    "broken,a broken clip\n")
    return d


def test_folder_source_samples_frames_with_stride(video_dir):
    src = VideoFolderSource(str(video_dir), resolution=32, frames=4, stride=3, start=2)
    assert len(src) == 4 and src.missing == 1  # uncaptioned.mp4 is left out
    item = next(src[i] for i in range(len(src)) if src.items[i][1] == "a green field")
    frames = unmosaic(item["image"], 4)
    assert frames.shape == (4, 16, 16, 3)
    np.testing.assert_allclose(frames[..., 0].mean(axis=(1, 2)), [20, 50, 80, 110], atol=3)  # frames 2, 5, 8, 11
    assert "_corrupt" in next(src[i] for i in range(len(src)) if src.items[i][1] == "a broken clip")


def test_folder_pipeline_skips_unreadable_and_resumes(video_dir):
    cfg = dict(name="video_folder", data_dir=str(video_dir), resolution=32, frames=4, frame_stride=2,
               conditioning="text", cond_drop_prob=0.0, keep_captions=True, flip=True,
               text=dict(tokenizer="byte", max_length=16), process_index=0, process_count=1)
    it, info = create_dataset(cfg, global_batch_size=2, seed=0)
    batches = [next(it) for _ in range(3)]
    assert batches[0]["images"].shape == (2, 32, 32, 3)
    assert info.conditioning == "text"
    seen = {c for b in batches for c in b["captions"]}
    assert seen <= {"a red fox", "a green field", "a blue sea"} and len(seen) == 3
    assert it.get_state()["num_skipped"] >= 1
    state = it.get_state()
    want = next(it)
    it2, _ = create_dataset(cfg, global_batch_size=2, seed=0)
    it2.set_state(state)
    got = next(it2)
    np.testing.assert_array_equal(got["images"], want["images"])
    assert got["captions"] == want["captions"]


def test_gif_and_mp4_round_trip(tmp_path):
    frames = np.zeros((6, 16, 16, 3), np.uint8)
    for k in range(6):
        frames[k, :, 2 * k:2 * k + 4] = 255
    paths = video_io.write_clip(mosaic(np.concatenate([frames[:4]])), 2, tmp_path / "clip", scale=2)
    assert [p.suffix for p in paths] == [".gif", ".mp4"]
    from PIL import Image

    gif = Image.open(paths[0])
    assert gif.n_frames == 4 and gif.size == (32, 32)
    with av.open(str(paths[1])) as c:
        decoded = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    assert len(decoded) == 4 and decoded[0].shape == (32, 32, 3)
    assert np.abs(decoded[3].astype(int) - frames[3].repeat(2, 0).repeat(2, 1)).mean() < 20


def test_moving_shapes_first_frame_does_not_give_the_direction_away():
    """Frame 0 is drawn alike for every direction, so only the caption's direction word predicts the motion."""
    src = MovingShapesSource(32, frames=4, num_examples=400)
    starts: dict[str, list] = {}
    for i in range(400):
        item = src[i]
        frame0 = unmosaic(item["image"], 4)[0].astype(np.float32)
        rgb = np.asarray(procedural.COLOURS[item["caption"].split()[1]], np.float32)
        ys, xs = np.nonzero(np.all(np.abs(frame0 - rgb) < 1, axis=-1))
        size = frame0.shape[0]
        starts.setdefault(item["caption"].split()[-1], []).append(((xs.mean() + 0.5) / size, (ys.mean() + 0.5) / size))
    means = {d: np.mean(pts, axis=0) for d, pts in starts.items()}
    spread = np.ptp(np.stack(list(means.values())), axis=0)
    assert len(means) == 4 and np.all(spread < 0.03), means  # the old renders started 0.3 off centre, opposite


def _centroids(src: MovingShapesSource, n: int) -> dict[str, np.ndarray]:
    """Mean shape centre (x, y, fraction of the frame) of single-frame items, per caption direction."""
    out: dict[str, list] = {}
    for i in range(n):
        item = src[i]
        img = item["image"].astype(np.float32)
        rgb = np.asarray(procedural.COLOURS[item["caption"].split()[1]], np.float32)
        ys, xs = np.nonzero(np.all(np.abs(img - rgb) < 1, axis=-1))
        out.setdefault(item["caption"].split()[-1], []).append((xs.mean() / 16, ys.mean() / 16))  # grid: i / size
    return {d: np.mean(v, axis=0) for d, v in out.items()}


def test_moving_shapes_stills_show_the_start_or_any_point_of_the_path():
    """Image-phase stills: the path's start by default; its end (0.35 of the frame along the motion) or a random
    point along it (0.35 / 2 on average) with still_frame='last' / 'random', where the direction word says where
    the shape is."""
    first = _centroids(MovingShapesSource(16, frames=1, num_examples=400), 400)
    anywhere = _centroids(MovingShapesSource(16, frames=1, num_examples=400, still_frame="random"), 400)
    last = _centroids(MovingShapesSource(16, frames=1, num_examples=400, still_frame="last"), 400)
    for d, (dx, dy) in {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}.items():
        np.testing.assert_allclose(first[d], 0.5, atol=0.03)
        np.testing.assert_allclose(anywhere[d] - 0.5, (0.175 * dx, 0.175 * dy), atol=0.04)
        np.testing.assert_allclose(last[d] - 0.5, (0.35 * dx, 0.35 * dy), atol=0.04)
    with pytest.raises(ValueError, match="still_frame"):
        MovingShapesSource(16, frames=1, still_frame="middle")
