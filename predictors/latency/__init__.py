"""What an architecture costs in time on a device: measurement, lookup tables, prediction."""

from predictors.latency import backends  # noqa: F401  (registers the torch/onnxruntime/cuda backends)
from predictors.latency.builder import (
    LocalMeasurer,
    Measurer,
    MeasureSettings,
    PrecisionMeasurer,
    build_table,
)
from predictors.latency.ensure import ensure_table, lut_path_for
from predictors.latency.fit import FittedLatencyModel, MeasurementsError, fit_latency_model
from predictors.latency.importers import import_proxyless_yaml, import_table
from predictors.latency.lut import (
    Calibration,
    LatencyTable,
    LatencyTableError,
    MissingEntriesError,
    arch_signatures,
)
from predictors.latency.model import LatencyModel, TabularLatencyModel, is_named_model, open_latency_model
from predictors.latency.measure import (
    LATENCY_BACKENDS,
    LatencyBackend,
    Measurement,
    get_backend,
    measure_module,
    measure_modules,
)
from predictors.latency.precision import FP32, INT8, PRECISIONS, LayerCost, parse_precisions
from predictors.latency.predictor import LatencyPredictor, load_latency_predictor
from predictors.latency.validate import (
    FidelityFigures,
    ValidationReport,
    validate_table,
)

__all__ = [
    "FP32",
    "INT8",
    "LATENCY_BACKENDS",
    "LayerCost",
    "PRECISIONS",
    "PrecisionMeasurer",
    "parse_precisions",
    "Calibration",
    "FidelityFigures",
    "LatencyBackend",
    "FittedLatencyModel",
    "LatencyPredictor",
    "LatencyModel",
    "LatencyTable",
    "LatencyTableError",
    "LocalMeasurer",
    "MeasureSettings",
    "MeasurementsError",
    "Measurement",
    "Measurer",
    "MissingEntriesError",
    "TabularLatencyModel",
    "ValidationReport",
    "arch_signatures",
    "build_table",
    "ensure_table",
    "fit_latency_model",
    "get_backend",
    "import_proxyless_yaml",
    "import_table",
    "load_latency_predictor",
    "is_named_model",
    "lut_path_for",
    "measure_module",
    "measure_modules",
    "open_latency_model",
    "validate_table",
]
