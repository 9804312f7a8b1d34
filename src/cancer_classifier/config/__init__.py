from cancer_classifier.config.configuration import ConfigurationManager
from cancer_classifier.core.errors import ConfigError

__all__ = ["ConfigError", "ConfigurationManager"]
