"""Machine learning on the device, in plain numpy.

- `model`: `ModelSpec`, flat float32 parameters, forward/backward, `model_hash`.
- `train`: `LocalTraining`, `train_local`, `evaluate`.
- `data`: the standard workload and its Dirichlet partition, `load_local` for partitions.

Nothing here imports scikit-learn at import time (only the workload builders use it,
lazily), opens sockets, starts threads or configures logging.
"""

from edge_swarm.learn.data import (
    WORKLOADS,
    DataError,
    Workload,
    breast_cancer_workload,
    dirichlet_partition,
    load_local,
    standard_workload,
    write_partitions,
)
from edge_swarm.learn.model import (
    ModelSpec,
    forward,
    init_params,
    loss_and_grad,
    model_hash,
    predict,
    unflatten,
)
from edge_swarm.learn.train import (
    STANDARD_TRAINING,
    LocalTraining,
    evaluate,
    train_local,
    training_seed,
)

__all__ = [
    "STANDARD_TRAINING",
    "WORKLOADS",
    "DataError",
    "LocalTraining",
    "ModelSpec",
    "Workload",
    "breast_cancer_workload",
    "dirichlet_partition",
    "evaluate",
    "forward",
    "init_params",
    "load_local",
    "loss_and_grad",
    "model_hash",
    "predict",
    "standard_workload",
    "train_local",
    "training_seed",
    "unflatten",
    "write_partitions",
]
