"""spot-drain-worker: a job worker for EC2 Spot instances that never loses an accepted job.

`create_app(config)` builds the Flask app; `spot_drain_worker.server.main` runs it under gunicorn.
"""

from .app import create_app
from .config import Config, ConfigError, load_config

__all__ = ["create_app", "Config", "ConfigError", "load_config"]
__version__ = "0.1.0"
