"""Side-by-side benchmark of attribution methods (floor 3): ``python -m benchmarks.run --help``."""
from benchmarks.methods import BASELINES, LayerInfo, available, register

__all__ = ["run_benchmark", "register", "available", "BASELINES", "LayerInfo", "COLUMNS"]


def __getattr__(name):
    # Imported lazily so that ``python -m benchmarks.run`` does not find the
    # module already loaded by the package (runpy's double-import warning).
    if name in ("run_benchmark", "COLUMNS"):
        from benchmarks import run

        return getattr(run, name)
    raise AttributeError(f"module 'benchmarks' has no attribute {name!r}")
