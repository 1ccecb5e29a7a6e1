"""tfcluster: distributed TensorFlow training on Ray, TensorFlow Serving on Kubernetes.

Workloads (DCGAN, NMT, DQN, policy gradient) train with Ray Train / Ray Tune / Ray
actors, export versioned SavedModels, and are served over TF Serving's gRPC API.
"""

import os as _os

_os.environ.setdefault("KERAS_BACKEND", "tensorflow")
_os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

__version__ = "0.1.0"
