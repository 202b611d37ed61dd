"""What the shipped checkpoints are (checkpoints/; tests/test_train_all.py checks them against this module and against
scripts/train_all.sh): each model's default detection settings, by which the README's tables, the app and the
notebooks summarise a results table, and the training options of the shipped inpainting networks beyond their size."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from i3ad.scoring import DetectionSettings


@dataclass(frozen=True)
class ModelSettings:
    """Detection settings per model name: ``per_model``'s for the models it names, ``others`` for the rest (a
    results table holds several models, and each is summarised at its own settings). Models are told apart by name
    only: a network of one's own trained under a shipped model's name is summarised at that model's settings."""

    others: DetectionSettings = DetectionSettings()
    per_model: Mapping[str, DetectionSettings] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "per_model", MappingProxyType(dict(self.per_model)))  # read-only, like the rest

    def of(self, model: str) -> DetectionSettings:
        return self.per_model.get(model, self.others)

    def with_(self, **changes: object) -> ModelSettings:
        """The same change for every model (e.g. another T)."""
        return ModelSettings(
            self.others.with_(**changes), {model: s.with_(**changes) for model, s in self.per_model.items()}
        )

    def describe(self, separator: str = "; ") -> str:
        """E.g. "i3ad: T = 2, ...; other models: T = 1, ..." for people, one model per ``separator``."""
        parts = [f"{model}: {settings_text(s)}" for model, s in sorted(self.per_model.items())]
        others = settings_text(self.others)
        return separator.join([*parts, f"other models: {others}"]) if parts else others


def settings_text(settings: DetectionSettings) -> str:
    """The settings a results row is chosen by, for people."""
    return (
        f"T = {settings.iterations}, each step-0 mask hiding {settings.step0_hidden_groups} of {settings.step0_masks} "
        f"grid groups of {settings.step0_cell_size} px, iteration painting {settings.iteration_painting}, shrinking "
        f"masks {'on' if settings.shrinking_masks else 'off'}, last-painting scores "
        f"{'on' if settings.last_painting_scores else 'off'}, measure {settings.anomaly_measure}, smoothing sigma "
        f"{settings.smoothing_sigma:g}, normal error {'subtracted' if settings.subtract_normal_error else 'kept'}"
    )


# The default settings of the shipped checkpoints per model. Both inpainting networks are trained with synthetic
# defects and iterate with shrinking masks re-painted in step 0's grid cells (results/README.md, items 9 and 11), each
# shipped at the T where its mean image AUROC peaks: i3ad at T = 2, i3ad-small at T = 0 (its rules apply from T = 1).
SHIPPED_SETTINGS = ModelSettings(
    per_model={
        "i3ad": DetectionSettings(iterations=2, shrinking_masks=True, iteration_painting="cells"),
        "i3ad-small": DetectionSettings(iterations=0, shrinking_masks=True, iteration_painting="cells"),
    }
)

# The shipped inpainting networks' training options beyond their size (TrainConfig fields; scripts/train_all.sh passes
# them as flags): synthetic defects on half the training images (results/README.md, items 8 and 11) and, for i3ad, no
# GroupNorm in its first two levels (item 4).
SHIPPED_TRAINING = MappingProxyType(
    {
        "i3ad": MappingProxyType({"synthetic_defects": 0.5, "norm_free_levels": 2}),
        "i3ad-small": MappingProxyType({"synthetic_defects": 0.5}),
    }
)
