"""wxarchive: compliance archiver for WeCom and WeChat."""
__version__ = "0.1.0"
