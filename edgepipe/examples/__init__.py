"""Bundled example data sets and model factories, usable as ``module:function`` in recipes."""
