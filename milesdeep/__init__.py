"""milesdeep: classify every second of a video with a CNN, then cut it by class.

Data flows one way: source -> frames -> tensors -> scores -> cuts -> outputs.
Every stage has a CPU implementation (PyAV, NumPy, ONNX Runtime) and a GPU one
(PyNvVideoCodec, CuPy, TensorRT); GPU packages are only imported on the GPU path.
"""

__version__ = "0.1.0"
