"""How transformers' Auto classes learn of growformer without ``import growformer``
importing transformers (which takes seconds).

``import growformer`` calls :func:`register_on_import`. When transformers' auto-configuration
module is first imported (at once if it already is), :class:`GrowformerConfig` is registered
with ``AutoConfig``; when its auto-model module is, :mod:`growformer.hf.model` is imported,
which registers the model classes with ``AutoModelForSequenceClassification`` and
``AutoModelForCausalLM``. Both run inside the user's import of transformers: a failure
there is a warning, never an error of that import.
"""

from __future__ import annotations

import contextlib
import importlib.abc
import importlib.util
import sys
import warnings
from collections.abc import Callable, Iterator
from importlib.machinery import ModuleSpec
from types import ModuleType
from typing import Any

from growformer.hf.files import MODEL_TYPE

AUTO_CONFIG_MODULE = "transformers.models.auto.configuration_auto"
AUTO_MODEL_MODULE = "transformers.models.auto.modeling_auto"


def register_on_import() -> None:
    """Register growformer with transformers' Auto classes once their modules are imported
    (at once for those that already are); imports nothing itself."""
    for name, callback in (
        (AUTO_CONFIG_MODULE, _register_config),
        (AUTO_MODEL_MODULE, _register_models),
    ):
        module = sys.modules.get(name)
        if module is not None:
            callback(module)
        elif not any(isinstance(f, _AfterImport) and f.name == name for f in sys.meta_path):
            sys.meta_path.insert(0, _AfterImport(name, callback))


@contextlib.contextmanager
def _warned(what: str) -> Iterator[bool]:
    """Run the registration inside; yield False (skip it) below transformers 5, whose
    absence :mod:`growformer.hf.config` names when it is imported."""
    version = getattr(sys.modules.get("transformers"), "__version__", "0")
    try:
        yield int(version.split(".")[0]) >= 5
    except Exception as e:
        warnings.warn(
            f"growformer could not register its {what} with transformers {version}: "
            f"{type(e).__name__}: {e}",
            RuntimeWarning,
            stacklevel=3,
        )


def _register_config(module: ModuleType) -> None:
    with _warned("model type") as supported:
        if supported:
            from growformer.hf.config import GrowformerConfig

            module.AutoConfig.register(MODEL_TYPE, GrowformerConfig, exist_ok=True)


def _register_models(module: ModuleType) -> None:
    del module  # the model classes register themselves with it when imported
    with _warned("model classes") as supported:
        if supported:
            import growformer.hf.model  # noqa: F401


class _AfterImport(importlib.abc.MetaPathFinder):
    """Calls ``callback(module)`` right after the module ``name`` is first imported.

    Args:
        name: Full module name.
        callback: Called with the module once it has been executed.
    """

    def __init__(self, name: str, callback: Callable[[ModuleType], None]) -> None:
        self.name = name
        self.callback = callback

    def find_spec(
        self, fullname: str, path: Any = None, target: ModuleType | None = None
    ) -> ModuleSpec | None:
        if fullname != self.name:
            return None
        # Out of the way first: the search below asks the other finders, not this one.
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(fullname)
        if spec is not None and spec.loader is not None:
            spec.loader = _ThenCall(spec.loader, self.callback)
        return spec


class _ThenCall(importlib.abc.Loader):
    """A module loader that calls ``callback(module)`` after the wrapped loader ran it."""

    def __init__(self, loader: importlib.abc.Loader, callback: Callable[[ModuleType], None]):
        self.loader = loader
        self.callback = callback

    def create_module(self, spec: ModuleSpec) -> ModuleType | None:
        return self.loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        self.loader.exec_module(module)
        self.callback(module)

    def __getattr__(self, name: str) -> Any:
        # get_source and friends (tracebacks show the module's lines through them).
        return getattr(self.loader, name)
