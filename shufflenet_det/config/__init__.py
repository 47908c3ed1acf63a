from .defaults import add_shufflenet_config, get_cfg

__all__ = ["add_shufflenet_config", "get_cfg"]
