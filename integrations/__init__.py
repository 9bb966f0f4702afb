"""Framework glue for :mod:`versioning`.

The core package never imports a web framework; everything that does lives here, one module per
framework, each behind its own install extra.
"""
