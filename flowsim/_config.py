"""JAX's persistent compilation cache, on by default for flowsim's users (not only its tests)."""

import os
import pathlib

import jax

_OFF = ("0", "off", "false", "no", "none")


def default_cache_dir() -> pathlib.Path:
    return pathlib.Path.home() / ".cache" / "flowsim" / "jax"


def enable_compilation_cache(path=None) -> "pathlib.Path | None":
    """Turn on JAX's persistent compilation cache at `path`.

    Default: `$FLOWSIM_JAX_CACHE` if set (`off` disables the cache), else
    `~/.cache/flowsim/jax`. A cache directory the user already configured in JAX is kept.
    Compiled solves are then reused across processes: a second `flowsim run` or test session
    skips most compilation. Returns the directory in use, or None when disabled.
    """
    if path is None:
        configured = jax.config.jax_compilation_cache_dir
        if configured:
            return pathlib.Path(configured)
        env = os.environ.get("FLOWSIM_JAX_CACHE")
        if env is not None and env.strip().lower() in _OFF:
            return None
        path = pathlib.Path(env) if env else default_cache_dir()
    path = pathlib.Path(path).expanduser()
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError:
        return None  # a read-only home: run without the cache rather than fail on import
    jax.config.update("jax_compilation_cache_dir", str(path))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
    return path
