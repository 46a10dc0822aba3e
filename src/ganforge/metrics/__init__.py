"""Metrics of generated images. Feature extraction lives apart from the maths of each metric."""
