"""What a tabular dataset is to a search: an oracle that answers a trial with recorded figures."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

from search_spaces.spec import ArchSpec


@dataclass(frozen=True)
class TabularAnswer:
    """A trial answered from a table.

    `accuracy` in [0, 1] (the observed column, see `column`); `epochs`: the length of the training
    schedule whose result the table holds (nothing is trained here); `train_time_s`: that
    training's time when the table records it, else None; `params` / `macs` of the network the
    table describes; `index`: the architecture's row id in the table."""

    accuracy: float
    epochs: int
    train_time_s: float | None
    params: int
    macs: int
    index: int
    column: str


class TabularDataset(ABC):
    """A dataset given as a table rather than images: `--dataset nb201:cifar10` and the like.

    Loaders (`nas.training.data.load_dataset`) return it where they would return image splits;
    the trial evaluation answers from it instead of training (`nas.search.trial`)."""

    name: str
    num_classes: int
    resolution: int
    in_channels: int = 3

    @abstractmethod
    def answer(self, arch: ArchSpec, epochs: int | None = None) -> TabularAnswer:
        """The recorded result of `arch`: of the dataset's own schedule, or with `epochs`, of the
        longest recorded schedule within that many epochs (the shortest when none is)."""

    @abstractmethod
    def cost(self, arch: ArchSpec) -> tuple[int, int]:
        """(params, MACs) of `arch` as the table counts them."""
