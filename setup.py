"""The package's files: its code under src/, and the page's templates/ and static/ as its data.

Everything else (name, dependencies, the console script) is in pyproject.toml. The page's folders stay
at the top level, where Flask users look for them, and ship inside the package as
``cancer_classifier.templates`` and ``cancer_classifier.static``: a wheel, and the image built from one,
carry them, and an editable install finds them in the checkout.
"""

from setuptools import find_packages, setup

PAGE_FOLDERS = {"cancer_classifier.templates": "templates", "cancer_classifier.static": "static"}

setup(
    packages=find_packages("src") + list(PAGE_FOLDERS),
    package_dir={"": "src", **PAGE_FOLDERS},
    package_data={package: ["*"] for package in PAGE_FOLDERS},
)
