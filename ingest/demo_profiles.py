"""Settings of the main job's profiles: `demo` (all 30 layers in minutes on 2 cores) and `full` (more of everything)."""

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
    ce_tokens: int = 1024  # held-out tokens for the spliced-in next-token loss

    def train_config(self, out: str, *, model: str | None = "default", corpus: str | None = None,
                     device: str | None = None, layers: list[int] | None = None) -> TrainConfig:
        """The TrainConfig of this profile."""
        return TrainConfig(out=out, model=model, layers=layers if layers is not None else self.layers,
                           corpus=corpus, train_tokens=self.train_tokens, test_tokens=self.test_tokens,
                           settings=self.settings, device=device, ce_tokens=self.ce_tokens)


PROFILES = {
    # Every layer, so that attribution graphs have features from every layer: 2,048 features per layer, two
    # epochs over 24,000 tokens (about 5 minutes of training on 2 CPU cores; see bench/bench_train.py).
    "demo": Profile("demo", None, train_tokens=24_000, test_tokens=2_000, ingest_tokens=30_000,
                    settings=TrainSettings(n_features=2048, epochs=2), ce_tokens=512),
    "full": Profile("full", None, train_tokens=200_000, test_tokens=16_000, ingest_tokens=200_000,
                    settings=TrainSettings(epochs=3)),
}
