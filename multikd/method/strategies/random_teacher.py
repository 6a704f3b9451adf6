"""One teacher per batch, drawn at random (stochastic teacher selection)."""

from __future__ import annotations

import torch

from multikd.errors import StrategyError
from multikd.method.strategies.base import Selection, Strategy, check_int, register_strategy


@register_strategy(
    "random",
    "one teacher per batch, drawn uniformly by a seeded generator (Fukuda et al. 2017)",
)
class RandomTeacher(Strategy):
    """One teacher per batch, drawn uniformly: ``w_ki = 1`` iff k = k*, k* ~ U{0..K-1} from
    a generator seeded with ``seed`` (stochastic teacher selection, as in Fukuda et al.
    2017, "Efficient knowledge distillation from an ensemble of teachers"). The generator
    lives on the CPU (no device sync) and its state is saved by :meth:`state_dict`."""

    def __init__(self, seed: int = 0):
        self.seed = check_int("random", "seed", seed)
        self._generator = torch.Generator().manual_seed(self.seed)

    def _select(self, ce, logits, labels):
        # the draw stays a 0-dim CPU tensor, which the comparison takes as a scalar kernel
        # argument: int(draw) would be a host read (of a CPU tensor, so no GPU sync, but a
        # read that a CPU-only check of the step could not tell from a real one)
        draw = torch.randint(ce.shape[0], (), generator=self._generator)
        chosen = (torch.arange(ce.shape[0], device=ce.device) == draw).unsqueeze(1)
        chosen = chosen.expand_as(ce)
        return Selection(chosen.to(ce.dtype), chosen)

    def state_dict(self) -> dict:
        return {"generator": self._generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        if set(state) != {"generator"}:
            raise StrategyError(
                f"strategy 'random' expects a state with the key 'generator', got {sorted(state)}"
            )
        self._generator.set_state(state["generator"].to(device="cpu", dtype=torch.uint8))
