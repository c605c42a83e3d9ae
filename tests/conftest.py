import numpy as np
import pytest
import torch

torch.set_num_threads(2)


def make_task_arrays(n_train=24, n_test=8, size=32, seed=0):
    """Small synthetic normal / abnormal arrays: noise backgrounds, abnormal = bright square (masked)."""
    rng = np.random.default_rng(seed)

    def normals(n):
        return (0.4 + 0.2 * rng.random((n, size, size))).astype(np.float32)

    def abnormals(n):
        x = normals(n)
        m = np.zeros_like(x, np.uint8)
        for i in range(n):
            r, c = rng.integers(2, size - 10, 2)
            x[i, r:r + 8, c:c + 8] = 1.0
            m[i, r:r + 8, c:c + 8] = 1
        return x, m

    return normals, abnormals


def make_tiny_data(seed=0):
    """Two tasks of 32 px synthetic images with masks (train normal-only, labelled valid and test)."""
    from medad_edu.data import ArraySplit, MultiTaskData, TaskData

    normals, abnormals = make_task_arrays(seed=seed)
    tasks = []
    for name in ("chest_xray", "brain_mri"):
        def labelled(n):
            a, m = abnormals(n)
            return ArraySplit(np.concatenate([normals(n), a]), np.r_[np.zeros(n), np.ones(n)],
                              np.concatenate([np.zeros_like(m), m]))
        tasks.append(TaskData(name, f"{name} prompt", train=ArraySplit(normals(24), np.zeros(24)),
                              test=labelled(8), valid=labelled(6)))
    return MultiTaskData(tasks, 32, name="tiny")


@pytest.fixture
def tiny_data():
    return make_tiny_data()
