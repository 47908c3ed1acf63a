from .defaults import add_shufflenet_config, get_cfg
from .loading import ConfigError, config_dir, list_configs, load_config, resolve_config_path, split_trailing_overrides

__all__ = ["ConfigError", "add_shufflenet_config", "config_dir", "get_cfg", "list_configs", "load_config",
           "resolve_config_path", "split_trailing_overrides"]
