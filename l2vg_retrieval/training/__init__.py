"""Training-side tooling: data preparation for the generative-embedding objective."""
