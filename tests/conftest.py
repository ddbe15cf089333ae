import os
import pathlib

import jax

jax.config.update("jax_enable_x64", True)
# A persistent compilation cache keeps repeated CI runs and local re-runs fast.
_cache = pathlib.Path(os.environ.get("FLOWSIM_JAX_CACHE", pathlib.Path.home() / ".cache" / "flowsim" / "jax"))
_cache.mkdir(parents=True, exist_ok=True)
jax.config.update("jax_compilation_cache_dir", str(_cache))
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
