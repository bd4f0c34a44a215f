"""rssc-mlflow: reproduce "The Role of Pre-Training in HRRS Scene Classification" with MLflow."""

__version__ = "0.1.0"
