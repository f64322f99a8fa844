"""The bottom layer: errors, atomic files, folder locks, threads and devices, text tables.

Nothing here knows about images or models; every other layer may use it.
"""
