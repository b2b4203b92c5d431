"""Building, caching, validating and running TensorRT engines (imports TensorRT lazily)."""
