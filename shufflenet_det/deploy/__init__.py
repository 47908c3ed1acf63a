"""Deployment: inference rewrites (BatchNorm folding, ShuffleNet pointwise variants), export, runtimes."""
