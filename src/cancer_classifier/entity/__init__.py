from cancer_classifier.entity.config_entity import (
    AugmentationConfig,
    DataIngestionConfig,
    EvaluationConfig,
    PrepareBaseModelConfig,
    RegistryConfig,
    ServingConfig,
    SyntheticConfig,
    TrackingConfig,
    TrainingConfig,
)

__all__ = [
    "AugmentationConfig",
    "DataIngestionConfig",
    "EvaluationConfig",
    "PrepareBaseModelConfig",
    "RegistryConfig",
    "ServingConfig",
    "SyntheticConfig",
    "TrackingConfig",
    "TrainingConfig",
]
