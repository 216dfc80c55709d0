"""cvray: distributed computer-vision batch jobs on Ray.

The package imports without Ray: the plain-PyTorch modules (models, augment, engine, style,
data readers) run anywhere torch runs; only `cvray.train`, `cvray.bulk` and `cvray.sweeps`
import Ray.
"""

__version__ = "0.1.0"
