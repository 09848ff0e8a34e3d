"""AI analysis of chest radiographs: data, preprocessing, the pneumonia CNN, training, evaluation.

Modules are imported on demand (``from medshard.analysis.model import load_model``) so that
importing this package does not pull in torch for users of the rest of medshard.
"""
