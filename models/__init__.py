"""Model code without Spark: XGBoost activity model, PyTorch towers and ranker, FAISS indexes."""
