r"""Check that an ml-mdm checkout builds the real models before benchmarking against it.

(a) Builds S64 and S64S256 (our architecture configs, text width 2048) with ml-mdm's own classes and compares every
    state_dict key and shape with ``reference/mlmdm_state_dict_{64,256}.tsv`` (enumerated from ml-mdm at de8cde2).
(b) Loads the parity fixtures' weights (``unet_p1.npz``, ``unet_p2.npz``) into ml-mdm's model, runs it on the
    stored inputs and compares with the stored outputs (made by ml-mdm at de8cde2 on CPU, float32).
Also runs ml-mdm's own training loss and one CFG sampler step on p2 (finite values expected).

    python benchmarks/check_mlmdm_checkout.py --mlmdm=/path/to/ml-mdm \
        --parity=../shared/parity --reference=../shared/reference
"""

from __future__ import annotations

import argparse
import json
import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.path.join(REPO, "..", "shared")


def _tsv(path: str) -> dict[str, tuple[int, ...]]:
    out = {}
    with open(path) as f:
        for line in f:
            if line.startswith("#") or not line.strip():
                continue
            key, shape = line.rstrip("\n").split("\t")
            out[key] = tuple(int(x) for x in shape.strip("()").split(",") if x.strip())
    return out


def check_state_dicts(reference: str) -> bool:
    import torch  # noqa: F401

    from benchmarks.mlmdm_torch import build_vision_model, mlmdm_model_config
    from mdm_jax.models.architectures import get_architecture

    ok = True
    for name, tsv in (("S64", "mlmdm_state_dict_64.tsv"), ("S64S256", "mlmdm_state_dict_256.tsv")):
        want = _tsv(os.path.join(reference, tsv))
        model = build_vision_model(mlmdm_model_config(get_architecture(name).to_dict()))
        got = {k: tuple(v.shape) for k, v in model.state_dict().items()}
        missing, extra = sorted(set(want) - set(got)), sorted(set(got) - set(want))
        bad = sorted(k for k in set(want) & set(got) if want[k] != got[k])
        n = sum(int(v.numel()) for v in model.state_dict().values())
        good = not (missing or extra or bad)
        ok &= good
        print(f"{name}: {len(got)} tensors ({len(want)} in {tsv}), {n:,} values; missing {missing[:5]} "
              f"extra {extra[:5]} shape mismatches {bad[:5]} -> {'OK' if good else 'FAIL'}")
        del model
    return ok


def check_fixtures(parity: str, tol: float) -> bool:
    import numpy as np
    import torch

    from benchmarks.mlmdm_torch import build_diffusion, build_vision_model, diffusion_config

    torch.set_grad_enabled(False)
    configs = json.load(open(os.path.join(parity, "configs.json")))["models"]
    ok = True
    for name in ("p1", "p2"):
        entry = configs[name]
        f = np.load(os.path.join(parity, entry["files"]["unet"]))
        model = build_vision_model(entry["unet_config"]).eval()
        sd = {k[len("param/"):]: torch.from_numpy(f[k]) for k in f.files if k.startswith("param/")}
        model.load_state_dict(sd, strict=True)
        n_levels = len([k for k in f.files if k.startswith("in/x_")])
        xs = [torch.from_numpy(f[f"in/x_{i}"]) for i in range(n_levels)]
        out = model(xs if n_levels > 1 else xs[0], torch.from_numpy(f["in/t"]).float(),
                    torch.from_numpy(f["in/lm_outputs"]), torch.from_numpy(f["in/lm_mask"]))
        out = out if isinstance(out, list) else [out]
        diffs = [float(np.abs(o.numpy() - f[f"out/{i}"]).max()) for i, o in enumerate(out)]
        scale = max(float(np.abs(f[f"out/{i}"]).max()) for i in range(n_levels))
        good = max(diffs) <= tol
        ok &= good
        print(f"{name}: {len(sd)} tensors loaded strictly; max |ml-mdm(this checkout) - fixture| per level "
              f"{[f'{d:.2e}' for d in diffs]} (outputs up to {scale:.3f}) -> {'OK' if good else 'FAIL'}")
        if name == "p2":  # the loss and one CFG sampler step of ml-mdm's own diffusion code run
            diff = build_diffusion(model, diffusion_config(entry["diffusion_config"], nested=True))
            b = xs[0].shape[0]
            sample = {"images": xs[0].clamp(-1, 1), "lm_outputs": torch.from_numpy(f["in/lm_outputs"]),
                      "lm_mask": torch.from_numpy(f["in/lm_mask"])}
            torch.manual_seed(0)
            losses = diff.get_loss(sample)[0]
            lm2 = torch.cat([sample["lm_outputs"]] * 2)
            m2 = torch.cat([sample["lm_mask"]] * 2)
            x = diff.sampler.get_xt_minus_1(diff.get_model(), 858, [torch.randn_like(x) for x in xs], lm2, m2,
                                            {}, time_step_last=715, guidance_scale=3.0, ddim_eta=0.0)
            finite = bool(torch.isfinite(losses).all()) and all(bool(torch.isfinite(v).all()) for v in x)
            ok &= finite and losses.shape == (b,)
            print(f"p2: ml-mdm get_loss -> {losses.numpy()}, CFG sampler step -> shapes "
                  f"{[tuple(v.shape) for v in x]}, finite {finite}")
    return ok


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--mlmdm", required=True, help="root of an apple/ml-mdm checkout")
    p.add_argument("--parity", default=os.environ.get("MDM_PARITY_DIR", os.path.join(SHARED, "parity")))
    p.add_argument("--reference", default=os.path.join(SHARED, "reference"))
    p.add_argument("--tol", type=float, default=1e-5, help="max abs difference to the fixture outputs")
    args = p.parse_args()
    sys.path.insert(0, REPO)
    from benchmarks.mlmdm_torch import import_mlmdm

    stubbed = import_mlmdm(args.mlmdm)
    print(f"ml-mdm from {args.mlmdm}; shim stand-ins: {stubbed or 'none'}")
    ok = check_state_dicts(args.reference)
    ok &= check_fixtures(args.parity, args.tol)
    print("ALL OK" if ok else "FAILED")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
