"""CodeEraser's stopping and best-model rule (reference codeeraser-sscu.md §3), as a small resumable object."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass


@dataclass
class StoppingRule:
    """After each epoch's evaluation: decide whether the model improved (it then becomes `final/`) and whether to stop.

    The rule, as the original runs it: MA must not rise; once EL_n is being measured (the margin gate opened at an
    earlier epoch) EL_n must not rise either, or patience counts down. The forget set counts as forgotten when MA is
    below its threshold and, for n = 10, EL10 is below its threshold too (or patience ran out while MA kept falling).
    """

    ma_threshold: float
    el_threshold: float
    el_n: int = 10
    margin: float = 0.3
    patience: int = 5
    best_ma: float = 1.0
    best_el: float = 1.0
    best_epoch: int = -1
    counter: int = 0
    el_gate_open: bool = False
    stop_reason: str | None = None

    @property
    def needs_el(self) -> bool:
        """Whether this epoch's evaluation must compute EL_n (the gate opened after an earlier epoch)."""
        return self.el_gate_open

    def update(self, epoch: int, ma: float, el: float | None) -> bool:
        """Record an epoch; returns True when it is the new best model. Sets `stop_reason` when training should end."""
        if math.isnan(ma) or (self.el_gate_open and (el is None or math.isnan(el))):
            raise ValueError(f"epoch {epoch}: metrics are NaN (MA={ma}, EL{self.el_n}={el})")
        improved = False
        if ma <= self.best_ma:
            if self.el_gate_open:
                assert el is not None
                if el <= self.best_el:
                    self.best_el, self.best_ma, self.best_epoch, self.counter = el, ma, epoch, 0
                    improved = True
                else:
                    self.counter += 1
            else:
                self.best_ma, self.best_epoch = ma, epoch
                improved = True
        if ma < self.ma_threshold:
            if self.el_n != 10:
                self.stop_reason = f"forget MA {ma:.4f} < threshold {self.ma_threshold:.4f}"
            elif self.el_gate_open and el is not None and el < self.el_threshold:
                self.stop_reason = (
                    f"forget MA {ma:.4f} < {self.ma_threshold:.4f} and EL10 {el:.4f} < {self.el_threshold:.4f}"
                )
            elif self.el_gate_open and self.counter >= self.patience:
                self.stop_reason = (
                    f"forget MA {ma:.4f} < {self.ma_threshold:.4f}; EL10 did not improve for {self.counter} epochs"
                )
        if ma <= self.ma_threshold + self.margin and self.el_n == 10:
            self.el_gate_open = True
        return improved

    def state_dict(self) -> dict:
        return asdict(self)

    def load_state_dict(self, state: dict) -> None:
        for key, value in state.items():
            setattr(self, key, value)
