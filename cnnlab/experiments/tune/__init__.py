"""Hyperparameter search for the lab's CNN (lab part 8): a TOML search space, one objective, two engines.

Optuna runs trials in this process and keeps the study in SQLite, so a stopped or crashed search
continues where it was when run again. Ray Tune runs the same objective on the free cores, or on a
Ray cluster, stopping weak trials with ASHA and sampling with Optuna; its trials go into the same
kind of study, so the trials table, the best configuration and the plots are made alike for both.
"""
