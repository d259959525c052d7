"""Shared test setup: absl flags parsed (grain needs it), persistent compilation cache under /tmp."""

import os

from absl import flags

flags.FLAGS.mark_as_parsed()

import jax  # noqa: E402

jax.config.update("jax_compilation_cache_dir", os.environ.get("MDM_TEST_CACHE", "/tmp/mdm_jax_test_cache"))
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
