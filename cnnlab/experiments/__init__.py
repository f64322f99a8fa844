"""Experiments built from the layers below: the fast recipes, transfer learning, the carbon sweep, the
device benchmark and hyperparameter search (``tune``).
"""
