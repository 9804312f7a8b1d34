from setuptools import find_packages, setup

setup(
    name="cancer_classifier",
    version="0.1.0",
    description="Chest CT cancer classification: DVC pipeline, MLflow registry, Flask serving",
    package_dir={"": "src"},
    packages=find_packages("src"),
    python_requires=">=3.11",
)
