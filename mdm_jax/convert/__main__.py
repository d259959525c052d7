"""``python -m mdm_jax.convert``: see ``mdm_jax.convert.cli``."""

from mdm_jax.convert.cli import main

raise SystemExit(main())
