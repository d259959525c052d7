"""gs:// paths against a GCS JSON API on localhost (gcp-storage-emulator): file helpers, checkpoints with their
quarantine and resume errors, ``sources.load`` (``init.checkpoint``), and file data sources read from a bucket.

The training round trip (train -> SIGKILL -> resume, workdir gs://) is in test_train_loop.py.
"""

from __future__ import annotations

import importlib.util
import json
import os
import tarfile

import jax
import jax.numpy as jnp
import numpy as np
import pytest

if importlib.util.find_spec("gcsfs") is None or importlib.util.find_spec("gcp_storage_emulator") is None:
    pytest.skip("needs the gcs and dev extras: pip install -e '.[gcs,dev]'", allow_module_level=True)

from gcs_emulator import Emulator  # noqa: E402
from test_data_sources import COLORS, _add, _all, _encode, _solid  # noqa: E402

from mdm_jax import io_paths  # noqa: E402
from mdm_jax.training import checkpoint as ckpt_lib  # noqa: E402
from mdm_jax.training import sources  # noqa: E402

BUCKET = "mdm-unit"


@pytest.fixture(scope="module")
def emulator(tmp_path_factory):
    root = tmp_path_factory.mktemp("gcs")
    (root / "data").mkdir()
    with Emulator(BUCKET, str(root / "data")) as emu, pytest.MonkeyPatch.context() as mp:
        for k, v in emu.env.items():
            mp.setenv(k, v)
        yield emu


def test_io_paths_round_trip(emulator):
    root = f"gs://{BUCKET}/paths"
    io_paths.write_text(f"{root}/a/config.json", '{"x": 1}')
    io_paths.write_bytes(f"{root}/a/b/c.bin", b"\0\1")
    assert io_paths.read_text(f"{root}/a/config.json") == '{"x": 1}'
    assert io_paths.isdir(f"{root}/a") and io_paths.isfile(f"{root}/a/b/c.bin") and not io_paths.exists(f"{root}/z")
    assert io_paths.listdir(f"{root}/a") == ["b", "config.json"]
    assert io_paths.glob(f"{root}/a/**/*.bin") == [f"{root}/a/b/c.bin"]
    assert io_paths.resolve(f"{root}/") == root  # a URL is never made into a local path
    io_paths.move(f"{root}/a", f"{root}/moved/a")
    assert not io_paths.exists(f"{root}/a/config.json")
    assert sorted(emulator.objects("paths/")) == ["paths/moved/a/b/c.bin", "paths/moved/a/config.json"]


def _state(value: float):
    return ({"step": jnp.int32(value), "params": {"unet": {"w": jnp.full((4, 3), value)}},
             "opt_state": ({"mu": jnp.zeros(3)},)}, {"unet": {"w": jnp.full((4, 3), value / 2)}})


def test_checkpoints_quarantine_and_resume_errors_on_gcs(emulator):
    run = f"gs://{BUCKET}/ckpt_run"
    ck = ckpt_lib.Checkpointer(f"{run}/checkpoints", keep=3, async_save=False)
    for step in (1, 2):
        state, ema = _state(float(step))
        ck.save(step, state=state, ema=ema, config={}, meta={"phase": 0, "phase_name": "p", "step": step})
    assert ck.steps() == [1, 2] and ck.directory == f"{run}/checkpoints"
    # init.checkpoint from a run in a bucket
    src = sources.load(run)
    np.testing.assert_array_equal(src.params["unet"]["w"], 2.0)
    np.testing.assert_array_equal(src.ema["unet"]["w"], 1.0)
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), _state(0.0))

    # A failure that is not the checkpoint's fault stops and moves nothing.
    def wrong_config(step):
        raise ValueError("checkpoint phase 0 'p' is not in this config's phases ['q']")

    with pytest.raises(ckpt_lib.ResumeError, match="phases"):
        ck.restore_latest(wrong_config)
    assert ck.steps() == [1, 2] and not emulator.objects("ckpt_run/checkpoints_corrupt/")
    # A damaged checkpoint (its array metadata gone) is moved aside within the bucket.
    io_paths.path(f"{run}/checkpoints/2/ema/_METADATA").unlink()
    step, out = ck.restore_latest(lambda s: ck.restore(s, abstract_state=abstract[0], abstract_ema=abstract[1]))
    assert step == 1 and int(out["state"]["step"]) == 1
    assert ck.steps() == [1]
    assert [n for n in emulator.objects("ckpt_run/checkpoints_corrupt/") if n.endswith("meta/metadata")]
    ck.close()


def _upload_tree(local_root, remote_root):
    for dirpath, _, files in os.walk(local_root):
        for f in files:
            rel = os.path.relpath(os.path.join(dirpath, f), local_root)
            with open(os.path.join(dirpath, f), "rb") as fh:
                io_paths.write_bytes(io_paths.join(remote_root, rel), fh.read())


def _images_and_captions(cfg):
    batches, info, _ = _all(cfg)
    return (np.concatenate([b["images"] for b in batches]), sum((b.get("captions", []) for b in batches), []),
            info.num_examples)


def test_file_data_sources_read_from_gcs(emulator, tmp_path):
    local = tmp_path / "data"
    (local / "wds").mkdir(parents=True)
    with tarfile.open(local / "wds" / "shard-000.tar", "w") as tf:
        for i, c in enumerate(COLORS[:3]):
            _add(tf, f"{i:04d}.jpg", _encode(_solid(c), "JPEG"))
            _add(tf, f"{i:04d}.txt", f"thing {i}".encode())
    (local / "tsv" / "shards").mkdir(parents=True)
    with tarfile.open(local / "tsv" / "shards" / "images_00000.tar", "w") as tf:
        for i, c in enumerate(COLORS):
            _add(tf, f"{i:010d}.png", _encode(_solid(c), "PNG"))
    rows = ["tar\tfile\tcaption"] + [f"images_00000.tar\t{i:010d}.png\tcolour {i}" for i in range(4)]
    (local / "tsv" / "shards" / "images_00000.tsv").write_text("\n".join(rows) + "\n")
    (local / "tsv" / "train.tsv").write_text("filename\nshards/images_00000.tsv\n")
    (local / "folder").mkdir()
    for i, c in enumerate(COLORS[:2]):
        (local / "folder" / f"im{i}.png").write_bytes(_encode(_solid(c), "PNG"))
        (local / "folder" / f"im{i}.txt").write_text(f"side car {i}")
    remote = f"gs://{BUCKET}/data"
    _upload_tree(str(local), remote)
    common = {"resolution": 8, "keep_captions": True, "cond_drop_prob": 0.0, "drop_remainder": False}
    cases = [({"name": "webdataset", "data_dir": "{}/wds"}, 3),
             ({"name": "image_text_tsv", "file_list": "{}/tsv/train.tsv"}, 4),
             ({"name": "image_text_tsv", "data_dir": "{}/tsv/shards"}, 4),
             ({"name": "image_folder", "data_dir": "{}/folder"}, 2)]
    for case, n in cases:
        at = lambda root, case=case: {k: v.format(root) if k != "name" else v for k, v in case.items()}  # noqa: E731
        want = _images_and_captions({**common, **at(str(local))})
        got = _images_and_captions({**common, **at(remote)})
        assert got[2] == want[2] == n, case
        np.testing.assert_array_equal(got[0], want[0])
        assert got[1] == want[1] and len(got[1]) == n
    # A data_dir that is not there names itself.
    from mdm_jax.data.file_sources import MissingDataError

    with pytest.raises(MissingDataError, match="gs://mdm-unit/data/typo"):
        _all({**common, "name": "webdataset", "data_dir": f"{remote}/typo"})


@pytest.mark.skipif(importlib.util.find_spec("av") is None, reason="PyAV is not installed (pip install -e '.[video]')")
def test_video_data_prepared_and_read_on_gcs(emulator, tmp_path):
    """prepare_video writes clips + captions to gs://, and the video_folder source reads them back (PyAV on a
    ranged reader) exactly as from a local folder."""
    from mdm_jax.data import prepare_video
    from mdm_jax.data.video import VideoFolderSource

    args = ["--source", "shapes", "--num", "2", "--frames", "4", "--size", "16"]
    remote = f"gs://{BUCKET}/videos"
    assert prepare_video.main(["--out", remote, *args]) == 0
    assert prepare_video.main(["--out", str(tmp_path / "videos"), *args]) == 0
    assert sorted(o.rsplit("/", 1)[1] for o in emulator.objects("videos/")) == sorted(
        p.name for p in (tmp_path / "videos").iterdir())
    got = VideoFolderSource(remote, resolution=32, frames=4, stride=1, start=0)
    want = VideoFolderSource(str(tmp_path / "videos"), resolution=32, frames=4, stride=1, start=0)
    assert [c for _, c in got.items] == [c for _, c in want.items] and len(got) == 2
    for i in range(len(got)):
        np.testing.assert_array_equal(got[i]["image"], want[i]["image"])


def test_eval_classifier_and_compile_plan_files_on_gcs(emulator):
    from mdm_jax.evaluation import classifier
    from mdm_jax.training import compile_plan

    params = {"conv0": {"kernel": np.ones((3, 3, 3, 4), np.float32)}}
    classifier.save(f"gs://{BUCKET}/clf", params, {"num_classes": 3, "width": 4, "feature_dim": 8})
    _, loaded, meta = classifier.load(f"gs://{BUCKET}/clf/classifier.npz")
    np.testing.assert_array_equal(loaded["conv0"]["kernel"], params["conv0"]["kernel"])
    assert meta["num_classes"] == 3
    plan = compile_plan.PhasePlan(phase="64", resolutions="64", batch=8, steps=10, topology="v5p:2x2x1",
                                  chip="v5p", devices=4, hosts=1, mesh={"data": 4, "fsdp": 1}, params=123,
                                  hbm=95e9, flops=1e12, peak_flops=459e12)
    compile_plan.write_json([plan], f"gs://{BUCKET}/plans/p.json")
    (back,) = json.loads(io_paths.read_text(f"gs://{BUCKET}/plans/p.json"))
    assert back["params"] == 123 and back["topology"] == "v5p:2x2x1"


def test_precomputed_text_embeddings_written_to_gcs(emulator, tmp_path):
    """The precompute command publishes its ArrayRecord file, null embedding and meta to gs:// as whole objects."""
    from mdm_jax.data import precomputed
    from mdm_jax.text.precompute import precompute
    from mdm_jax.text.tokenizers import ByteTokenizer

    def encode(tokens, mask):
        return np.repeat(tokens[..., None].astype(np.float32), 2, -1) * mask[..., None]

    data = {"name": "procedural_shapes", "resolution": 8, "num_examples": 6, "text": {"null_caption": "nothing"}}
    remote = f"gs://{BUCKET}/emb"
    for out in (remote, str(tmp_path)):
        precompute(data, encode, ByteTokenizer(), out, ("train",), batch_size=4)
    assert sorted(o.rsplit("/", 1)[1] for o in emulator.objects("emb/")) == sorted(
        p.name for p in tmp_path.iterdir())
    assert precomputed.load_meta(remote) == precomputed.load_meta(str(tmp_path))
    assert io_paths.read_bytes(precomputed.record_path(remote, "train")) == \
        (tmp_path / "train.array_record").read_bytes()
