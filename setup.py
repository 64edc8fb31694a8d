from setuptools import find_packages, setup

setup(
    name="kwp",
    version="0.1.0",
    description="A webhooks proxy on Twisted: receive, verify, store durably, deliver by pull or push",
    python_requires=">=3.10",
    packages=find_packages(include=["kwp", "kwp.*"]) + ["twisted.plugins"],
    include_package_data=False,
    # The web console's files, served from the installed package.
    package_data={"kwp.console": ["static/*"]},
    install_requires=[
        "twisted>=25.5",
        "klein>=23.5",
        "treq>=23.11",
        "pyyaml>=6.0",
        "prometheus-client>=0.20",
        "jmespath>=1.0",
        "psycopg[binary]>=3.1",
    ],
    extras_require={
        "test": [
            "pytest>=7.4",
            "pytest-twisted>=1.14",
            "hypothesis>=6.90",
            "pytest-timeout>=2.2",
            "supervisor>=4.2",
            "slack_sdk>=3.26",
            "standardwebhooks>=1.0",
            "svix>=1.0",
            "stripe>=7.0",
            "schemathesis>=4.0",
            "playwright>=1.40",
        ],
    },
    entry_points={"console_scripts": ["kwp = kwp.cli:main"]},
)
