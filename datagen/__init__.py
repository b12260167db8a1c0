"""datagen: seeded synthetic datasets for grokking studies (composition, comparison, modular
arithmetic, permutation groups, the shared-vocabulary logic-to-mathematics tables). Command line:
`python -m datagen data=composition out_dir=DIR`."""

from datagen.build import build_dataset, config_hash, load_or_build
from datagen.config import DATA_CONFIGS, data_config_from_dict
from datagen.dataset import Dataset
from datagen.vocab import Vocab

__all__ = [
    "DATA_CONFIGS",
    "Dataset",
    "Vocab",
    "build_dataset",
    "config_hash",
    "data_config_from_dict",
    "load_or_build",
]
