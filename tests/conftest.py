"""Shared fixtures: tiny random checkpoints written in exactly the official layouts, loaded as a user would."""

import pytest
import torch

from model import write_random_bundle


@pytest.fixture(scope="session")
def bundle(tmp_path_factory):
    """model/ (3 shards + index), tokenizer/, vision_tokenizer/ of one tiny random model."""
    return write_random_bundle(tmp_path_factory.mktemp("bundle"), seed=0)


@pytest.fixture(autouse=True)
def _threads():
    torch.set_num_threads(2)
