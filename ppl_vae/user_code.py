"""A user's own model or guide, named on the command line as ``path/to/file.py:name``.

``name`` is a function (a Pyro model or guide as it stands), a module-level object (an
``nn.Module`` instance, say), or a class, instantiated with the data's dimensions: its
``__init__`` gets ``x_dim`` and ``image_shape`` where it takes arguments of those names.
A dotted name reaches into an object: ``file.py:VAE.model`` and ``file.py:VAE.guide`` are
the ``model`` and ``guide`` methods of one ``VAE`` instance, shared by both (as in Pyro's
own VAE example).
"""

from __future__ import annotations

import importlib.util
import inspect
import sys
from pathlib import Path


def is_file_ref(name: str | None) -> bool:
    """Whether ``name`` looks like ``something.py:attribute``."""
    if not name or ":" not in name:
        return False
    path, _, attr = name.rpartition(":")
    return path.endswith(".py") and bool(attr)


def resolve_ref(name: str) -> str:
    """``name`` with its file made absolute and checked to exist (for the checkpoint's record)."""
    path, _, attr = name.rpartition(":")
    file = Path(path).expanduser().resolve()
    if not file.is_file():
        raise ValueError(f"'{name}': there is no file {file}")
    return f"{file}:{attr}"


def _module(file: Path):
    key = f"ppl_vae_user_{abs(hash(str(file)))}"
    if key in sys.modules and getattr(sys.modules[key], "__file__", None) == str(file):
        return sys.modules[key]
    spec = importlib.util.spec_from_file_location(key, file)
    if spec is None or spec.loader is None:
        raise ValueError(f"cannot import {file} as Python")
    module = importlib.util.module_from_spec(spec)
    sys.modules[key] = module
    try:
        spec.loader.exec_module(module)
    except Exception as err:
        del sys.modules[key]
        raise ValueError(f"importing {file} failed: {type(err).__name__}: {err}") from None
    return module


def _instantiate(cls, dims: dict, where: str):
    params = inspect.signature(cls).parameters
    kwargs = {k: v for k, v in dims.items() if k in params}
    missing = [
        n
        for n, p in params.items()
        if p.default is inspect.Parameter.empty and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and n not in kwargs
    ]
    if missing:
        raise ValueError(
            f"{where}: cannot instantiate {cls.__name__}: it needs {missing}; the command line gives only "
            f"{sorted(dims)} (give them defaults, or name a function or an instance instead)"
        )
    return cls(**kwargs)


def load_user_callable(name: str, x_dim: int, image_shape, shared: dict):
    """The callable ``name`` refers to (see the module docstring); ``shared`` holds the instances
    made for one pair, so a model and a guide from one class share their object."""
    path, _, attr = name.rpartition(":")
    file = Path(path).resolve()
    if not file.is_file():
        raise ValueError(f"'{name}': there is no file {file} (moved? pass --model/--guide with its new place)")
    obj = _module(file)
    dims = {"x_dim": x_dim, "image_shape": tuple(image_shape) if image_shape is not None else None}
    parts = attr.split(".")
    for i, part in enumerate(parts):
        if not hasattr(obj, part):
            known = sorted(n for n in dir(obj) if not n.startswith("_"))[:12]
            raise ValueError(f"'{name}': {'.'.join(parts[:i]) or file.name} has no attribute '{part}' (it has {known})")
        obj = getattr(obj, part)
        if inspect.isclass(obj):
            key = (str(file), ".".join(parts[: i + 1]))
            if key not in shared:
                shared[key] = _instantiate(obj, dims, name)
            obj = shared[key]
    if not callable(obj):
        raise ValueError(f"'{name}' is a {type(obj).__name__}, not a callable model or guide")
    return obj
