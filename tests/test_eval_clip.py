"""JAX CLIP loaded from a save_pretrained folder vs transformers' PyTorch CLIPModel, tiny random config."""

import numpy as np
import pytest

from mdm_jax.evaluation import clip


def test_clip_matches_transformers(tmp_path):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    cfg = transformers.CLIPConfig(
        text_config=dict(vocab_size=99, hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                         num_attention_heads=4, max_position_embeddings=16, eos_token_id=98, bos_token_id=97,
                         pad_token_id=0),
        vision_config=dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
                           image_size=30, patch_size=6),
        projection_dim=24)
    torch.manual_seed(0)
    model = transformers.CLIPModel(cfg).eval()
    model.save_pretrained(str(tmp_path), safe_serialization=True)

    rng = np.random.default_rng(0)
    pixels = rng.normal(size=(3, 3, 30, 30)).astype(np.float32)
    ids = rng.integers(1, 97, size=(3, 16))
    mask = np.ones_like(ids)
    for row, length in enumerate((16, 9, 4)):  # end-of-text at different places, padding after it
        ids[row, length - 1] = 98
        ids[row, length:] = 0
        mask[row, length:] = 0
    with torch.no_grad():
        ref_img = model.visual_projection(model.vision_model(pixel_values=torch.from_numpy(pixels)).pooler_output)
        ref_txt = model.text_projection(model.text_model(input_ids=torch.from_numpy(ids),
                                                         attention_mask=torch.from_numpy(mask)).pooler_output)
    ours = clip.CLIP(str(tmp_path))
    got_img = np.asarray(clip.image_embeds(ours.params, ours.config, pixels.transpose(0, 2, 3, 1)))
    got_txt = np.asarray(clip.text_embeds(ours.params, ours.config, ids, mask))
    err_i, err_t = np.abs(got_img - ref_img.numpy()).max(), np.abs(got_txt - ref_txt.numpy()).max()
    print(f"CLIP image embeds max abs error {err_i:.3g}, text {err_t:.3g}")
    assert err_i < 1e-5 and err_t < 1e-5
    # CLIP score: 100 * max(cos, 0), checked against the definition.
    a, b = ref_img.numpy(), ref_txt.numpy()
    cos = (a * b).sum(-1) / np.linalg.norm(a, axis=-1) / np.linalg.norm(b, axis=-1)
    assert clip.clip_score(got_img, got_txt) == pytest.approx(np.mean(100 * np.maximum(cos, 0)), abs=1e-3)
    assert clip.clip_score(got_img, got_img) == pytest.approx(100.0, abs=1e-4)
