"""DualRec: creator-side dispatch pipeline (Spark + XGBoost + PyTorch + FAISS + Airflow)."""

from setuptools import find_packages, setup

setup(
    name="dualrec",
    version="0.1.0",
    description="Creator-side dispatch pipeline for short-video platforms (DualRec, WWW'25)",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.11,<3.13",
    packages=find_packages(include=["dualrec", "dualrec.*", "jobs", "jobs.*", "models", "models.*", "schemas", "schemas.*"]),
    include_package_data=True,
    package_data={"dualrec": ["*.properties", "templates/*", "evaluation/templates/*"]},
    install_requires=[
        # torch is pinned: 2.13.0 is the CPU build; a looser spec pulls a multi-GB CUDA build.
        "torch==2.13.0",
        "pyspark>=4.0,<5",
        "xgboost-cpu>=2.1,<4",
        "faiss-cpu>=1.8,<2",
        "pyarrow>=15",
        "numpy>=1.26",
        # pyspark 4.x does not fully support pandas 3 yet
        "pandas>=2.2,<3",
        "scikit-learn>=1.4",
        "matplotlib>=3.8",
        "pyyaml>=6",
        "filelock>=3.12",
        "rich>=13",
        "pydantic>=2",
        "apache-airflow>=3.0,<4",
        # 5.6 depends on pyspark itself; 6.x pulls pyspark-client, which overwrites pyspark's files
        "apache-airflow-providers-apache-spark==5.6.0",
    ],
    extras_require={
        "test": ["pytest>=8", "pytest-timeout>=2.3", "hypothesis>=6.100"],
    },
    entry_points={"console_scripts": ["dualrec=jobs.cli:main"]},
)
