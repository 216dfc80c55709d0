"""cvray: distributed computer-vision batch jobs on Ray.

The package imports without Ray: the plain-PyTorch modules (models, augment, engine, style,
data readers) run anywhere torch runs; only `cvray.on_ray.training`, `cvray.on_ray.bulk` and `cvray.sweeps`
import Ray.
"""

__version__ = "0.1.0"
