"""A sampling web page: ``python -m mdm_jax.serve --workdir=DIR`` (our run or a converted ml-mdm checkpoint)."""
