"""Energy and CO2eq of training: settings (country, backend), meters (codecarbon, carbontracker) and
``CarbonCallback``, which any ``fit`` can take.
"""
