"""tfcluster: distributed TensorFlow training on Ray, TensorFlow Serving on Kubernetes.

Workloads (DCGAN, NMT, DQN, policy gradient) train with Ray Train / Ray Tune / Ray
actors, export versioned SavedModels, and are served over TF Serving's gRPC API.
"""

import os as _os

from tfcluster import quiet as _quiet

_os.environ.setdefault("KERAS_BACKEND", "tensorflow")
_quiet.install()  # TensorFlow's native start-up lines out of every log (see tfcluster.quiet)

__version__ = "0.1.0"
