"""coroseg: coronary-artery segmentation for X-ray angiograms, recorded in MLflow."""

__version__ = "0.1.0"
