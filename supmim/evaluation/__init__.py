"""Evaluation of trained encoders: features, classification, kNN, retrieval, segmentation,
robustness, and side-by-side reports."""
