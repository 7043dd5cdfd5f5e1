"""Settings of the main job's profiles: `demo` (a few layers, minutes on 2 cores) and `full` (all 30 layers)."""

from __future__ import annotations

from dataclasses import dataclass, field

from ingest.train_run import TrainConfig
from ingest.transcoder_training import TrainSettings


@dataclass(frozen=True)
class Profile:
    """How much the main job trains and ingests."""

    name: str
    layers: list[int] | None  # None: every layer
    train_tokens: int
    test_tokens: int
    ingest_tokens: int
    settings: TrainSettings = field(default_factory=TrainSettings)

    def train_config(self, out: str, *, model: str | None = "default", corpus: str | None = None,
                     device: str | None = None, layers: list[int] | None = None) -> TrainConfig:
        """The TrainConfig of this profile."""
        return TrainConfig(out=out, model=model, layers=layers if layers is not None else self.layers,
                           corpus=corpus, train_tokens=self.train_tokens, test_tokens=self.test_tokens,
                           settings=self.settings, device=device)


PROFILES = {
    "demo": Profile("demo", [10, 15, 20], train_tokens=40_000, test_tokens=8_000, ingest_tokens=30_000),
    "full": Profile("full", None, train_tokens=200_000, test_tokens=16_000, ingest_tokens=200_000,
                    settings=TrainSettings(epochs=3)),
}
