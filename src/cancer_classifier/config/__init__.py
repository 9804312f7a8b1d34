from cancer_classifier.config.configuration import ConfigError, ConfigurationManager

__all__ = ["ConfigError", "ConfigurationManager"]
