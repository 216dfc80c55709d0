"""cvray: distributed computer-vision batch jobs on Ray.

Layout (README.md draws it whole): plain-PyTorch workloads in `cvray.classification` and
`cvray.style`, shared plumbing at the top (storage, images, folders, manifest, plots, grids,
console, errors), and every import of Ray in `cvray.on_ray`. Everything outside `cvray.on_ray`
imports without Ray (tests/test_no_ray.py checks it), so GPU hosts without Ray run the core.
"""

__version__ = "0.1.0"
