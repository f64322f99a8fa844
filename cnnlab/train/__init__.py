"""Training: ``Model`` (Keras' compile/fit/evaluate/predict/save on PyTorch), the callbacks that do every
side job of ``fit``, verified checkpoints, schedules, optimizers and the Keras-style summary.
"""
