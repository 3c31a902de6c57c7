"""interp: train neural networks and see what happens inside them.

The command line (``interp train | analyze | animate | report | stages``) is a thin layer over these
functions; heavy modules are imported on first use so that ``import interp`` stays cheap.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # what type checkers see; at run time __getattr__ imports each on first use
    from .analysis.api import Analyzer
    from .analysis.evaluation import Evaluation
    from .analysis.records import Record, load_record
    from .analysis.sink import NullSink
    from .analysis.views import draw_figures
    from .animate import animate_config
    from .config import Config, load_config
    from .data import load_data
    from .errors import UserError
    from .models import build_model
    from .optvis import visualize
    from .report import build_report
    from .stages.base import Stage, Summary, register_stage
    from .stages.exemplars import UnitExemplars, exemplars
    from .train import fit

__all__ = [
    "Analyzer",
    "Config",
    "Evaluation",
    "NullSink",
    "Record",
    "Stage",
    "Summary",
    "UnitExemplars",
    "UserError",
    "analyze",
    "animate_config",
    "build_model",
    "build_report",
    "draw_figures",
    "exemplars",
    "fit",
    "load_config",
    "load_data",
    "load_record",
    "register_stage",
    "visualize",
]
__version__ = "0.1.0"

# Both a function and the module that defines it: bound here, so that importing the module (the command line
# does) cannot leave ``interp.analyze`` pointing at the module. Cheap: it imports no torch.
from .analyze import analyze  # noqa: E402

_LAZY = {
    "Analyzer": "analysis.api",
    "Evaluation": "analysis.evaluation",
    "NullSink": "analysis.sink",
    "Record": "analysis.records",
    "load_record": "analysis.records",
    "draw_figures": "analysis.views",
    "Stage": "stages.base",
    "Summary": "stages.base",
    "register_stage": "stages.base",
    "Config": "config",
    "load_config": "config",
    "UserError": "errors",
    "fit": "train",
    "animate_config": "animate",
    "build_model": "models",
    "build_report": "report",
    "load_data": "data",
    "visualize": "optvis",
    "exemplars": "stages.exemplars",
    "UnitExemplars": "stages.exemplars",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'interp' has no attribute {name!r}")
