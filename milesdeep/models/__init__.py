"""Model bundles: an ONNX file, its labels and a preprocessing manifest."""

from milesdeep.models.bundle import InputSpec, ModelBundle, load_bundle, resolve_model

__all__ = ["InputSpec", "ModelBundle", "load_bundle", "resolve_model"]
