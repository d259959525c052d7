"""Shared test setup: absl flags parsed (grain needs it), persistent compilation cache under /tmp."""

import os

from absl import flags

flags.FLAGS.mark_as_parsed()

import jax  # noqa: E402

jax.config.update("jax_compilation_cache_dir", os.environ.get("MDM_TEST_CACHE", "/tmp/mdm_jax_test_cache"))
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)

import pathlib  # noqa: E402

import pytest  # noqa: E402

from mdm_jax.diffusion.parity import parity_dir as _find_parity  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[1]
# ml-mdm's golden fixtures, the one place tests look for them: $MDM_PARITY_DIR or <repo>/../shared/parity.
PARITY = _find_parity()
needs_parity = pytest.mark.skipif(not (PARITY / "configs.json").exists(),
                                  reason=f"no parity fixtures at {PARITY} (set MDM_PARITY_DIR)")


@pytest.fixture(scope="session")
def parity_dir() -> pathlib.Path:
    """ml-mdm's golden fixtures: ``$MDM_PARITY_DIR`` or ``<repo>/../shared/parity``; skips the test if absent."""
    if not (PARITY / "configs.json").exists():
        pytest.skip(f"no parity fixtures at {PARITY} (set MDM_PARITY_DIR)")
    return PARITY


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory) -> str:
    """A finished run of ``configs/demo.py:tiny`` (two phases, 12 steps, CPU seconds), trained once per session."""
    from mdm_jax.training import config_lib, train_and_evaluate

    if os.environ.get("MDM_TEST_DEMO_RUN"):  # reuse a finished demo:tiny run (local iteration)
        return os.environ["MDM_TEST_DEMO_RUN"]
    workdir = str(tmp_path_factory.mktemp("demo_run"))
    train_and_evaluate(config_lib.load(f"{REPO}/configs/demo.py:tiny"), workdir)
    return workdir
