"""End to end: a tiny class-conditional run with periodic eval, then ``--mode=eval`` on its checkpoint, in the
in-project classifier's feature space (procedural shapes, 24 classes, 16/8 px)."""

import json
import os

import numpy as np
import pytest

from mdm_jax.evaluation import classifier, run
from mdm_jax.training import config_lib, train_and_evaluate


def _config(clf_dir: str) -> config_lib.ConfigDict:
    c = config_lib.base_config()
    c.model.num_classes = 24
    c.data = config_lib.ConfigDict(dict(name="procedural_shapes", conditioning="class", resolution=16,
                                        cond_drop_prob=0.1, num_workers=0))
    c.phases = [config_lib.phase("p", model=config_lib.tiny_architecture([16, 8], num_classes=24, width=16),
                                 batch_size=8, steps=6)]
    c.optimizer = config_lib.optimizer(learning_rate=1e-3, warmup_steps=2, ema_decay=0.9)
    c.checkpoint = config_lib.ConfigDict(dict(every_steps=6, keep=2, async_save=False))
    c.log_every_steps = 3
    c.sample.num_images = 0
    c.eval = run.eval_config(every_steps=6, num_samples=40, num_reference=40, batch_size=20, num_steps=3,
                             kid_subsets=4, kid_subset_size=20, prdc_k=3, classifier_path=clf_dir)
    return c


def test_classifier_train_and_mode_eval(tmp_path):
    clf_dir, workdir = str(tmp_path / "clf"), str(tmp_path / "run")
    c = _config(clf_dir)
    meta = classifier.train(c, clf_dir, steps=40, batch_size=32, width=8, feature_dim=32, num_test=100)
    assert meta["resolution"] == 16 and meta["num_classes"] == 24 and 0.0 <= meta["test_accuracy"] <= 1.0

    train_and_evaluate(c, workdir)  # periodic eval at step 6 (the trainer hook)
    during = json.load(open(os.path.join(workdir, "eval", "step_00000006.json")))
    assert set(during["levels"]) == {"16px", "8px"}

    c.eval.use_ema = False
    res = run.evaluate_checkpoint(c, workdir)  # --mode=eval, raw weights
    assert res["step"] == 6 and res["weights"] == "raw"
    for lvl in ("16px", "8px"):
        s = res["levels"][lvl]["FD_classifier"]
        for part in ("samples", "floor"):
            assert {"FD_classifier", "KID", "precision", "recall", "density", "coverage",
                    "cond_accuracy"} <= set(s[part])
            assert np.isfinite(s[part]["FD_classifier"])
    # The floor's conditional accuracy at the top level is the classifier's accuracy on those real test images.
    module, params, _ = classifier.load(clf_dir)
    x, y = classifier.read_split(classifier._data_config(c), "test", 40)
    assert res["levels"]["16px"]["FD_classifier"]["floor"]["cond_accuracy"] == classifier.accuracy(
        module, params, x, y)
    # Reference statistics were cached once per (split, resolution) and reused.
    cached = sorted(os.listdir(os.path.join(workdir, "eval_cache")))
    assert len(cached) == 4 and all("classifier-" in f for f in cached)
    assert json.load(open(os.path.join(workdir, "eval", "latest.json")))["weights"] == "raw"


def test_classifier_heads_and_old_sidecars(tmp_path):
    """New classifiers read the flattened map; a sidecar written before ``head`` existed loads as pooling."""
    import jax
    import jax.numpy as jnp
    import pytest

    x = jnp.zeros((2, 16, 16, 3))
    for head, fc_in in (("flatten", 4 * 4 * 4 * 8), ("gap", 4 * 8)):
        params = classifier.SmallCNN(5, 8, 16, head=head).init(jax.random.key(0), x)["params"]
        assert params["fc"]["kernel"].shape == (fc_in, 16)
    meta = dict(num_classes=5, width=8, feature_dim=16)  # no "head": an older classifier
    classifier.save(str(tmp_path / "old"), params, meta)
    module, loaded, _ = classifier.load(str(tmp_path / "old"))
    assert module.head == "gap" and module.apply({"params": loaded}, x)[1].shape == (2, 5)
    with pytest.raises(ValueError, match="classifier head"):
        classifier.SmallCNN(5, 8, 16, head="max").init(jax.random.key(0), x)


def test_read_real_keeps_a_split_whose_size_is_not_a_batch_multiple(tmp_path):
    """A 15-image test split (300 emoji, every 20th held out) read for 12: no final partial batch is dropped."""
    n = 300
    rng = np.random.default_rng(0)
    np.save(tmp_path / "emoji_64.npy", rng.integers(0, 256, (n, 64, 64, 3), dtype=np.uint8))
    meta = dict(source="test", files=[f"{i}.png" for i in range(n)], captions=[f"emoji {i}" for i in range(n)],
                category=[i % 3 for i in range(n)], subcategory=[i % 5 for i in range(n)],
                category_names=["a", "b", "c"], subcategory_names=list("vwxyz"))
    (tmp_path / "emoji_meta.json").write_text(json.dumps(meta))
    data = config_lib.data(name="emoji", data_dir=str(tmp_path), conditioning="class", resolution=64, num_workers=0)
    real = run.read_real(data, "test", 12, seed=0)  # batches of min(12, 100) = 12: 15 = 12 + 3
    assert real["images"].shape == (12, 64, 64, 3)
    real = run.read_real(data, "test", 15, seed=0)  # the whole split: 12 + the partial batch of 3
    assert real["images"].shape == (15, 64, 64, 3)
    with pytest.raises(ValueError, match="has 15 images, fewer than the 16"):
        run.read_real(data, "test", 16, seed=0)
