"""Supervised learning: classifiers (MLP, CNN, ResNet, ViT, LSTM), fit/evaluate, Grad-CAM, other tasks."""
