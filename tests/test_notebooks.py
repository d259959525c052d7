"""The notebooks, executed cell by cell with nbclient as a user would run them (install/download cells skip
themselves outside Colab), on small checkpoints the tests make; outputs checked."""

from __future__ import annotations

import json
import os

import pytest
from conftest import PARITY, REPO, needs_parity

nbclient = pytest.importorskip("nbclient")
nbformat = pytest.importorskip("nbformat")
pytest.importorskip("ipykernel")


def _execute(name: str, env: dict[str, str], cwd) -> list[str]:
    """Run every cell; returns each code cell's text outputs (stdout + text/plain), and checks images appeared."""
    nb = nbformat.read(os.path.join(REPO, "notebooks", name), as_version=4)
    old = dict(os.environ)
    os.environ.update({"PYTHONPATH": str(REPO), "JAX_PLATFORMS": "cpu", "MDM_INSTALL": "0", "MDM_DOWNLOAD": "0",
                       **env})
    try:
        nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                                resources={"metadata": {"path": str(cwd)}}).execute()
    finally:
        os.environ.clear()
        os.environ.update(old)
    texts, images = [], 0
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        out = []
        for o in cell.get("outputs", []):
            assert o.output_type != "error", (o.get("ename"), o.get("evalue"))
            if o.output_type == "stream":
                out.append(o.text)
            elif "data" in o:
                out.append(o.data.get("text/plain", ""))
                images += "image/png" in o.data
        texts.append("".join(out))
    assert images > 0, "no image was displayed"
    return texts


@needs_parity
def test_sample_mlmdm_notebook_on_a_converted_fixture_model(tmp_path):
    from test_pipeline import tiny_t5_with_mlmdm_vocab

    from mdm_jax import parity
    from mdm_jax.convert import convert_checkpoint

    entry = json.loads((PARITY / "configs.json").read_text())["models"]["p2"]
    (tmp_path / "p2.json").write_text(json.dumps(parity.model_config(entry)))
    convert_checkpoint(PARITY / "unet_p2.npz", tmp_path / "converted", config=str(tmp_path / "p2.json"),
                       log=lambda s: None)
    t5 = tiny_t5_with_mlmdm_vocab(tmp_path / "t5")
    texts = _execute("sample_mlmdm.ipynb", {"MDM_CONVERTED": str(tmp_path / "converted"), "MDM_T5_DIR": str(t5),
                                             "MDM_STEPS": "2", "MDM_PROMPTS": "a red chair|a chair"}, tmp_path)
    joined = "\n".join(texts)
    assert "resolutions: (32, 16)" in joined
    assert "level 32px: (2, 32, 32, 3) uint8" in joined and "level 16px: (2, 16, 16, 3) uint8" in joined


def test_sample_own_run_notebook_on_the_demo_run(demo_run, tmp_path):
    texts = _execute("sample_own_run.ipynb", {"MDM_WORKDIR": demo_run, "MDM_STEPS": "4"}, tmp_path)
    joined = "\n".join(texts)
    assert "conditioning: text | resolutions: (16, 8)" in joined
    assert "3 previews, then the final images at step 4" in joined
    assert "level 16px: (2, 16, 16, 3)" in joined and "level 8px: (2, 8, 8, 3)" in joined
