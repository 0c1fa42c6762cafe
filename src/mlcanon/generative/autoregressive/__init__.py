"""Autoregressive models: FVSBN, NADE, MADE, PixelCNN / gated PixelCNN on binary images; WaveNet and VRNN on
signals; LSTM, GPT and BERT-style language models on text. Each has exact ``log_prob`` (except VRNN: ELBO),
``loss(batch)`` and ``sample(n, ...)``."""
